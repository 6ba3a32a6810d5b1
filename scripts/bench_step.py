"""Time training steps of a config on the current device and write the figures as JSON.

    python scripts/bench_step.py --config configs/smoke.toml
    python scripts/bench_step.py --config configs/speedrun_124m.toml --random-data --out bench_124m.json
    torchrun --standalone --nproc_per_node=8 scripts/bench_step.py --config configs/speedrun_124m.toml

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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.shard import write_shard  # noqa: E402
from model import flops_per_token  # noqa: E402
from training.config import load_config, validate  # noqa: E402
from training.distributed import env_world_size, init_distributed, shutdown  # noqa: E402
from training.atomic import atomic_write_json  # noqa: E402
from training.hardware import device_name, peak_memory_mib, peak_tflops, synchronize  # noqa: E402
from training.run_data import prepare_data  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def random_shards(folder: Path, vocab_size: int, tokens: int, seed: int = 0,
                  name: str = "random_train_000001.bin") -> list[str]:
    rng = np.random.default_rng(seed)
    path = folder / name
    write_shard(path, rng.integers(0, vocab_size, size=tokens, dtype=np.uint16))
    return [str(path)]


def time_steps(trainer: Trainer, at: int, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps at schedule position `at`, after `warmup` untimed ones."""
    for _ in range(warmup):
        trainer.step(at)
    synchronize(trainer.info.device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step(at)
        synchronize(trainer.info.device)
        times.append(time.perf_counter() - t0)
    return times


def summarize(trainer: Trainer, times: list[float], window: int) -> dict:
    """The figures of the timed steps (all ranks together for tokens/s and TFLOP/s)."""
    cfg, info = trainer.cfg, trainer.info
    step_s = statistics.mean(times)
    fpt = flops_per_token(cfg.model, cfg.model.seq_len, window)
    achieved = fpt * cfg.data.batch_tokens / step_s / 1e12  # all ranks together
    peak = peak_tflops(info.device)
    return {
        "device": device_name(info.device, info.world_size),
        "world_size": info.world_size,
        "torch_version": torch.__version__,
        "compile": cfg.model.compile and info.device.type == "cuda",
        "attention": trainer.model.attention_kind(info.device),
        "timed_steps": len(times),
        "window": window,
        "grad_accum": trainer.accum,
        "tokens_per_step": cfg.data.batch_tokens,
        "step_ms_mean": 1000 * step_s,
        "step_ms_median": 1000 * statistics.median(times),
        "step_ms_min": 1000 * min(times),
        "tokens_per_s": cfg.data.batch_tokens / step_s,
        "model_flops_per_token": fpt,
        "achieved_tflops": achieved,
        "peak_tflops_per_device": peak,
        "mfu": achieved / (peak * info.world_size) if peak else None,
        "peak_memory_mib": peak_memory_mib(info.device),
    }


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
