"""The step stages' own process: the config's step timed whole (bench/timing.py, as scripts/bench/step.py
times it), then phase by phase (as scripts/bench/comm.py times them: one model, one compilation), and,
unless --no-validate, one validation of eval.tokens random tokens with its peak memory; JSON to --out.

    python -m scripts.gpu.step_worker --out step.json --config configs/speedrun_124m.toml --warmup=10 --steps=20 \\
        --data.batch_tokens=49152 [--distributed.one_rank_group=true --no-validate]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common.atomic import atomic_write_json
from common.hardware import peak_memory_mib, reset_peak_memory, synchronize
from data.loader import open_shards
from data.synthetic import random_shards
from distributed.process_group import init_distributed, shutdown
from scripts.bench.timing import summarize, time_phases, time_steps
from training.compilation import CompileWatch
from training.config import load_config, validate
from training.trainer import Trainer


def step_worker(out: str, config: str, overrides: list[str], warmup: int, steps: int, validate_too: bool) -> dict:
    """The whole step timed, then the same steps phase by phase (one model, one compilation), then
    (validate_too) one validation of eval.tokens random tokens with its peak memory (module docstring)."""
    cfg = load_config(config, overrides)
    validate(cfg, 1)
    info = init_distributed(cfg.device, cfg.distributed.timeout_s, cfg.distributed.one_rank_group)
    watch = CompileWatch().start()
    with tempfile.TemporaryDirectory() as tmp:
        rows = cfg.data.batch_tokens // cfg.model.seq_len
        need = (warmup + 2 * steps + 2) * (rows + 1) * (cfg.model.seq_len + 1)
        trainer = Trainer(cfg, info)
        trainer.build(random_shards(Path(tmp), cfg.model.vocab_size, min(need, 2**31 - 1)))
        at = cfg.schedule.steps // 2
        t0 = time.perf_counter()
        trainer.step(at)  # the first step: compilation (and autotuning)
        synchronize(info.device)
        compile_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            trainer.step(at)
        seen = watch.new_graphs()
        whole = summarize(trainer, time_steps(trainer, at, 0, steps), trainer.window_size(at))
        parts = time_phases(trainer, at, 0, steps)
        during = watch.new_graphs()
        val = None
        if validate_too:
            trainer.val_shards = open_shards(random_shards(Path(tmp), cfg.model.vocab_size, cfg.eval.tokens + 1,
                                                           seed=1, name="random_val_000000.bin"))
            reset_peak_memory(info.device)
            t0 = time.perf_counter()
            loss = trainer.validate(cfg.schedule.steps)  # the final validation: all of eval.tokens
            synchronize(info.device)
            val = {"tokens": cfg.eval.tokens, "seconds": time.perf_counter() - t0, "loss": loss,
                   "peak_memory_mib": peak_memory_mib(info.device)}
    result = {"config": config, "overrides": overrides, **whole, "warmup_steps": warmup, "breakdown": parts,
              "compile_time_s": compile_s, "graphs_compiled_in_warmup": seen, "graphs_compiled_while_timed": during,
              "graph_breaks": watch.graph_breaks, "orthogonalized": trainer.orthogonalized,
              "one_rank_group": info.active, "validation": val}
    watch.stop()
    atomic_write_json(out, result)
    shutdown()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (the first: compilation)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--no-validate", action="store_true", help="no validation pass")
    args, overrides = parser.parse_known_args(argv)
    step_worker(args.out, args.config, overrides, args.warmup, args.steps, not args.no_validate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
