"""One command for the GPU figures: the Newton–Schulz kernels, the 124M step with its breakdown (whole
model, and block by block in a one-rank process group: the code 8 GPUs run), a short training run on
real text, the GPU tests, and (given the record's log) the record's script side by side.

    bash scripts/gpu/first_run.sh OUT                           # the prepared run on a borrowed GPU (~9 min)
    python3 -m scripts.gpu.check                                # default stages, about 9 minutes on one H100/H200
    python3 -m scripts.gpu.check --stages ns,step               # a subset (always run in the order below)
    python3 -m scripts.gpu.check --stages record --record-log PATH   # the side by side alone (about 5 minutes)
    python3 -m scripts.gpu.check --dry-run                      # the plan: stages, budgets, commands (any machine)
    python3 -m scripts.gpu.check --time-limit-s 540 --out-dir DIR --archive OUT/gpu_check.tar.gz

Stages, in this order (the measurements first), each a subprocess with its own time budget (seconds,
`--budget name=s`):

    ns          45  scripts/bench/newton_schulz.py: plain torch vs Triton at 48x768x768, 12x768x3072, 1x4096x4096
    step       150  the config's step at 48x1024 tokens on this one GPU, the whole model compiled as one process
                    runs it (scripts/bench/step.py's timing: mean step, tokens/s, MFU, peak memory), its
                    breakdown (scripts/bench/comm.py's CUDA-event phases: forward+backward, optimizer,
                    communication waits), graphs compiled while timed, and one validation of the speedrun's
                    10,485,760 tokens (random shards): its peak memory says whether it fits on an 80 GB GPU
    step_group 120  the same step in a one-rank process group (distributed.one_rank_group): per-block
                    compilation, gradient hooks and buckets, reduce-scatter, sharded Muon and its bf16
                    all-gather, the path of 8 GPUs with a world of one
    train      100  train_gpt.py for `--train-steps` steps at 48x1024 tokens: on the character-level
                    Shakespeare shards when data/shakespeare_char/ holds them (real text; they travel with the
                    working tree), else on the config's FineWeb shards if they exist, else on synthetic
                    Markov-chain shards; checks that the loss falls, that the run completed, and that nothing
                    fell back to eager (summary.json's `compile_fallbacks`, `graph_breaks`, `recompiles`; a
                    missing key is "unknown", not 0; and torch's "hit config.recompile_limit" warning)
    tests      100  `pytest -m gpu`: Triton kernels in bf16, FlexAttention vs dense, the fused AdamW, the
                    compiled block masks (whatever carries the `gpu` marker; a matrix cut to what matters)
    record     330  scripts/gpu/side_by_side.py: the record's own script (from `--record-log`) and ours, same GPU,
                    same shards, same tokens per GPU per step, same steps: both ms/step and the ratio; skipped
                    without `--record-log`: a second command of its own (scripts/gpu/first_run.sh OUT record)

The default stages' budgets add up to 515 s, for one command of at most 9 minutes on a borrowed GPU
(10 minutes per command, 15 minutes in all with the machine's start); `--time-limit-s` clips every budget
to the time left and skips a stage that would start with under a minute. The budgets are estimates for
cold caches (compilation dominates them), to be confirmed by the first run. Each stage writes its JSON
as soon as it ends, so a run killed from outside keeps what it measured (on SIGTERM the running
stage's processes are killed too):

    <out-dir>/<stage>.json          status, figures, table rows, the raw output JSON, the command, the environment
    <out-dir>/<stage>.log.txt       the stage's output
    <out-dir>/check.json            this invocation: environment, settings, every stage
    <out-dir>/table.txt             the final table
    --archive PATH                  all of <out-dir> as one .tar.gz, rewritten after every stage (a borrowed
                                    machine returns a few files only)

The default out-dir is records/gpu/<YYYY-MM-DD>_<device>/. An existing file is never overwritten: a
second run the same day writes `ns-2.json`, `check-2.json`, ... The table at the end shows each figure
with its target (targets are benchmarks: a missed one is reported, it does not fail the check). Exit
code: 0 when every selected stage ran and passed its checks (a skipped stage is fine), 1 otherwise, 77
at once on a machine without CUDA (nothing is written).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
import tempfile
from pathlib import Path

from common.paths import REPO
from scripts.gpu.running import (
    EXIT_NO_GPU,
    cuda_available,
    exit_on_sigterm,
    fresh_stem,
    no_gpu_message,
    run_check,
    table,
    write_archive,
)
from scripts.gpu.stages import STAGES, TOKENS_PER_GPU, Settings, Stage

EXIT_FAILED = 1


def select_stages(text: str) -> list[Stage]:
    """Stages named in a comma-separated list, in the fixed order of STAGES."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ValueError(f"--stages {text!r}: unknown {unknown or 'none given'}; choose from {','.join(STAGES)}")
    return [stage for name, stage in STAGES.items() if name in names]


def parse_budgets(items: list[str]) -> dict:
    """['train=200', 'ns=30,step=100'] -> {'train': 200, 'ns': 30, 'step': 100}."""
    budgets = {}
    for item in ",".join(items).split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        if name.strip() not in STAGES or not value.strip().replace(".", "", 1).isdigit():
            raise ValueError(f"--budget {item!r}: expected <stage>=<seconds> with a stage of {','.join(STAGES)}")
        budgets[name.strip()] = float(value)
    return budgets


def environment() -> dict:
    import torch

    from training.run_dir import git_commit

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    props = torch.cuda.get_device_properties(0)
    return {"time": datetime.datetime.now().isoformat(timespec="seconds"), "device": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1), "devices_visible": torch.cuda.device_count(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "git_commit": git_commit(), "argv": sys.argv[1:]}


def default_out_dir(device: str, date: datetime.date | None = None) -> Path:
    """records/gpu/<YYYY-MM-DD>_<device, lower case, runs of other characters as '-'>."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "unknown-device"
    return REPO / "records" / "gpu" / f"{(date or datetime.date.today()).isoformat()}_{slug}"


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--config", default="configs/speedrun_124m.toml")
    parser.add_argument("--record-log", help="a modded-nanogpt record log (its script is run by the record stage)")
    parser.add_argument("--tokens-per-gpu", type=int, default=TOKENS_PER_GPU)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--record-steps", type=int, default=100)
    parser.add_argument("--budget", action="append", default=[], help="stage=seconds (repeat or comma-separate)")
    parser.add_argument("--time-limit-s", type=float, default=None, help="all stages together (default: no limit)")
    parser.add_argument("--out-dir", default=None, help="default: records/gpu/<date>_<device>")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (works without a GPU)")
    parser.add_argument("--warmup", type=int, default=10, help="step stages: untimed steps")
    parser.add_argument("--steps", type=int, default=20, help="step stages: timed steps")
    parser.add_argument("--archive", default=None,
                        help="also write the whole out-dir as this .tar.gz, after every stage")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--") or "." not in o.split("=")[0]]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --section.key=value)")
    return parser, args, overrides


def config_path(config: str) -> str:
    """An absolute path (the stages run in the repository): as given from here, else from the repository."""
    path = Path(config)
    return str(path.resolve() if path.is_absolute() or path.exists() else REPO / path)


def print_plan(stages: list[Stage], settings: Settings) -> None:
    scratch = Path(tempfile.gettempdir()) / "gpu_check_<stage>"
    total = 0.0
    for stage in stages:
        reason = stage.skip(settings)
        budget = float(settings.budgets.get(stage.name, stage.budget_s))
        if reason:
            print(f"{stage.name:10} skipped: {reason}")
            continue
        total += budget
        print(f"{stage.name:10} {budget:5.0f} s  {stage.about}\n        "
              + " ".join(stage.command(settings, scratch, budget)))
    limit = f" (clipped to --time-limit-s {settings.time_limit_s:.0f})" if settings.time_limit_s else ""
    print(f"budgets add up to {total:.0f} s{limit}")


def main(argv: list[str] | None = None) -> int:
    parser, args, overrides = parse(argv)
    try:
        stages = select_stages(args.stages)
        budgets = parse_budgets(args.budget)
    except ValueError as e:
        parser.error(str(e))
    settings = Settings(config=config_path(args.config), overrides=tuple(overrides), tokens_per_gpu=args.tokens_per_gpu,
                        train_steps=args.train_steps, record_steps=args.record_steps, step_warmup=args.warmup,
                        step_steps=args.steps, record_log=args.record_log, budgets=budgets,
                        time_limit_s=args.time_limit_s)
    if args.dry_run:
        print_plan(stages, settings)
        return 0
    if not cuda_available():
        print(no_gpu_message("gpu_check"), file=sys.stderr)
        return EXIT_NO_GPU
    exit_on_sigterm()
    env = environment()
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(env["device"])
    print(f"GPU check on {env['device']} (torch {env['torch']}, triton {env['triton']}) -> {out_dir}", flush=True)
    archive = Path(args.archive).resolve() if args.archive else None
    results = run_check(stages, settings, out_dir, env, archive)
    text = table(results)
    print(text)
    (fresh_stem(out_dir, "table", (".txt",)).with_suffix(".txt")).write_text(text + "\n")
    if archive:
        write_archive(out_dir, archive)
    print(f"wrote {out_dir}" + (f" and {archive}" if archive else ""))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
