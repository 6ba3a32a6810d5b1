"""Train a modded NanoGPT: the command-line front (python or torchrun).

    python train_gpt.py --config configs/smoke.toml                      # one process (CPU or GPU)
    torchrun --standalone --nproc_per_node=8 train_gpt.py --config configs/speedrun_124m.toml
    python train_gpt.py --config configs/smoke.toml --optim.lr=0.02 --schedule.steps=50

It parses the config and its dotted overrides (training/config.py), joins the process group
(NCCL on GPU, gloo on CPU), runs a training.Trainer (set up, steps, validation, checkpoints,
summary) and maps the outcome to an exit code:
0 done, 1 failed (an unexpected error: the summary says failed, the traceback is in the run's
log.txt), 2 config, data or checkpoint error (found before anything is written, or mid-run),
3 diverged, 4 collective failure (another rank crashed or stalled), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

from common.config_io import to_toml
from common.errors import USER_ERRORS, ConfigError, WriteError
from common.exit_codes import EXIT_COLLECTIVE, EXIT_CONFIG, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from distributed import process_group as distributed
from training.config import load_config, validate
from training.run import train
from training.watchdog import NCCL_TIMEOUT_MARGIN_S

REPO = Path(__file__).resolve().parent
EXIT_OF_STATUS = {"completed": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}


def parse_args(argv: list[str] | None) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --section.key=value argument overrides that key of the config.",
    )
    parser.add_argument("--config", help="TOML config file (see configs/)")
    args, overrides = parser.parse_known_args(argv)
    return args.config, overrides


def _collective_failure(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.distributed.DistError) or any(
        k in text for k in ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer"))


def main(argv: list[str] | None = None) -> int:
    try:
        config_path, overrides = parse_args(argv)
        cfg = load_config(config_path, overrides)
        validate(cfg, distributed.env_world_size())
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    info = distributed.init_distributed(cfg.device, cfg.distributed.timeout_s, cfg.distributed.one_rank_group,
                                        nccl_margin_s=NCCL_TIMEOUT_MARGIN_S)
    try:
        distributed.check_same_everywhere(info, to_toml(cfg), distributed.code_hash(REPO))
        summary = train(cfg, info, {"config_file": config_path, "overrides": overrides})
    except USER_ERRORS as e:  # expected errors (bad config, data, checkpoint): a message; the traceback is in log.txt
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except WriteError as e:  # a full disk: the message says what is intact; the traceback is in log.txt
        print(f"error on rank {info.rank}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        if info.active and _collective_failure(e):
            print(f"error on rank {info.rank}: a collective operation failed: {e}\n"
                  f"Another rank probably crashed or stalled (see its log), or did not reach the same point within "
                  f"distributed.timeout_s = {cfg.distributed.timeout_s:g} s.", file=sys.stderr)
            return EXIT_COLLECTIVE
        traceback.print_exc()
        print(f"error on rank {info.rank}: {type(e).__name__}: {e} (the run's summary.json says failed)",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        distributed.shutdown()
    return EXIT_OF_STATUS[summary["status"]]


if __name__ == "__main__":
    sys.exit(main())
