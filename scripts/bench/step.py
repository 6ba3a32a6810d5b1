"""Time training steps of a config on the current device and write the figures as JSON.

    python -m scripts.bench.step --config configs/smoke.toml
    python -m scripts.bench.step --config configs/speedrun_124m.toml --random-data --out bench_124m.json
    torchrun --standalone --nproc_per_node=8 scripts/bench/step.py --config configs/speedrun_124m.toml

Runs `--warmup` untimed steps (compilation, allocator warm-up), then `--steps` timed ones, all at
the attention window of step `--at-step` (default: the middle of the schedule, where the growing
window is half grown). Reports step time (mean and median), tokens/s, model FLOPs utilization
against the device's bf16 dense peak (CUDA only), and peak memory. `--random-data` writes shards of
uniformly random tokens to a temporary folder, for machines without the FineWeb shards (the data
content does not change the step time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common.atomic import atomic_write_json
from data.synthetic import random_shards
from distributed.process_group import env_world_size, init_distributed, shutdown
from scripts.bench.timing import summarize, time_steps
from training.config import load_config, validate
from training.run_data import prepare_data
from training.trainer import Trainer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--at-step", type=int, default=None, help="schedule position (attention window) to time")
    parser.add_argument("--random-data", action="store_true", help="random-token shards instead of the config's")
    parser.add_argument("--out", default="bench_step.json")
    args, overrides = parser.parse_known_args(argv)

    cfg = load_config(args.config, overrides)
    validate(cfg, env_world_size())
    info = init_distributed(cfg.device)
    tmp = tempfile.TemporaryDirectory()
    try:
        if args.random_data:
            rows = cfg.data.batch_tokens // cfg.model.seq_len
            need = (args.warmup + args.steps + 1) * (rows + 1) * (cfg.model.seq_len + 1)
            train_files = random_shards(Path(tmp.name), cfg.model.vocab_size, min(need, 2**31 - 1))
        else:
            train_files = prepare_data(cfg, info, print if info.is_main else lambda *_: None).train_files
        trainer = Trainer(cfg, info)
        trainer.build(train_files)
        at = cfg.schedule.steps // 2 if args.at_step is None else args.at_step
        window = trainer.window_size(at)
        times = time_steps(trainer, at, args.warmup, args.steps)
    finally:
        tmp.cleanup()

    result = {"config": args.config, "overrides": overrides, **summarize(trainer, times, window), "warmup_steps": args.warmup}
    if info.is_main:
        atomic_write_json(args.out, result)
        print(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    shutdown()
    return result


if __name__ == "__main__":
    main()
