"""train_gpt.py's exit codes, shared with the tools that launch it (scripts/studies/sweep.py)."""

EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error mid-run: summary.json says "failed", the traceback is in log.txt
EXIT_CONFIG = 2  # a config or data error: found before training, or in a data shard first opened mid-run
EXIT_DIVERGED = 3  # the loss became non-finite; the last good checkpoint is kept
EXIT_COLLECTIVE = 4  # a collective failed or timed out: another rank crashed or stalled
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM (after writing a checkpoint, unless interrupted twice)

MEANINGS = {
    EXIT_FAILED: "failed (an error mid-run, or a worker's failure under torchrun; see the output)",
    EXIT_CONFIG: "config or data error",
    EXIT_DIVERGED: "diverged",
    EXIT_COLLECTIVE: "collective failure (another rank crashed or stalled)",
    EXIT_INTERRUPTED: "interrupted",
}
