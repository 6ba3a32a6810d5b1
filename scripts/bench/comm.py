"""Measure what the distributed machinery buys: gradient-reduction overlap and sharded orthogonalization.

    python -m scripts.bench.comm                                  # CPU gloo: smoke model, 1, 2 and 4 processes
    python -m scripts.bench.comm --config configs/speedrun_124m.toml --random-data --worlds 1,8   # 8 GPUs

For every world size, and for every combination of distributed.overlap (reductions start during
backward, or only after it) and distributed.shard_optimizer (each rank orthogonalizes its share,
or every rank all matrices), or with one process the plain step and the step in a one-rank group
(distributed.one_rank_group: the code path of several ranks, with a world of one), it launches `torchrun --nproc_per_node=W` on this script in worker
mode, times `--steps` training steps after `--warmup`, and records (rank 0, mean per step):

    step_ms              the whole step (forward_backward_ms + optimizer_ms)
    forward_backward_ms  micro-batches, forward and backward (reductions started inside it)
    optimizer_ms         from the end of backward to updated weights (waits, orthogonalization, gathers)
    comm_wait_ms         time stalled waiting for the gradient reductions: what the overlap did not hide
    gather_wait_ms       time stalled waiting for the all-gathers of the sharded updates

and derives optimizer_fraction = optimizer_ms / step_ms and, per world size,
hidden_fraction = 1 − comm_wait(overlap on) / comm_wait(overlap off). Writes one JSON file.
On one GPU (or one process) there is nothing to reduce, shard or hide: the single-process step is
measured plain and in a one-rank group. How it times: scripts/bench/timing.py ("timer" in the JSON:
CUDA events on GPU, host clocks on CPU, where a gloo wait blocks the host).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common.atomic import atomic_write_json
from common.hardware import device_name
from common.paths import REPO
from data.synthetic import random_shards
from distributed.process_group import barrier, broadcast_object, env_world_size, init_distributed, shutdown
from scripts.bench.timing import TIMERS, time_phases
from training.config import load_config, validate
from training.run_data import prepare_data
from training.trainer import Trainer

VARIANTS = [dict(overlap=o, shard=s) for o in (True, False) for s in (True, False)]
# one process: the plain step, and the same step in a one-rank group (every distributed path with a world of one:
# what the group costs in host overhead, e.g. per-chunk launches, is what it adds to the plain step)
ONE_PROCESS = [dict(overlap=True, shard=True), dict(overlap=True, shard=True, group=True)]


def worker(args, overrides) -> None:
    cfg = load_config(args.config, overrides)
    world = env_world_size()
    rows = cfg.data.batch_tokens // cfg.model.seq_len
    if rows % (world * cfg.data.micro_batch_size) and rows % world == 0:  # keep the global batch: fewer rows per rank
        cfg = load_config(args.config, [*overrides, f"--data.micro_batch_size={rows // world}"])
    validate(cfg, world)
    info = init_distributed(cfg.device, cfg.distributed.timeout_s, cfg.distributed.one_rank_group)
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_data:
            need = (args.warmup + args.steps + 2) * (cfg.data.batch_tokens + cfg.model.seq_len * info.world_size * 2)
            files = random_shards(Path(tmp), cfg.model.vocab_size, need) if info.is_main else None
            barrier(info)
            files = broadcast_object(files, info)
        else:
            files = prepare_data(cfg, info, lambda *_: None).train_files
        trainer = Trainer(cfg, info)
        trainer.build(files)
        phases = time_phases(trainer, cfg.schedule.steps // 2, args.warmup, args.steps)
    if info.is_main:
        result = dict(world_size=info.world_size, device=device_name(info.device, info.world_size),
                      one_rank_group=info.active and info.world_size == 1,
                      overlap=cfg.distributed.overlap, shard_optimizer=cfg.distributed.shard_optimizer,
                      **phases, orthogonalized_by_rank0=trainer.orthogonalized)
        atomic_write_json(args.worker_out, result)
    shutdown()


def launch(world: int, variant: dict, args, overrides, out_file: Path) -> dict:
    flags = [f"--distributed.overlap={str(variant['overlap']).lower()}",
             f"--distributed.shard_optimizer={str(variant['shard']).lower()}",
             *(["--distributed.one_rank_group=true"] if variant.get("group") else [])]
    inner = ["-m", "scripts.bench.comm", "--worker-out", str(out_file), "--config", args.config,
             f"--steps={args.steps}", f"--warmup={args.warmup}", *(["--random-data"] if args.random_data else []),
             *overrides, *flags]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *inner]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        return {"world_size": world, **variant, "error": "\n".join(errors[-5:]) or done.stderr[-2000:]}
    return json.loads(out_file.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.toml")
    parser.add_argument("--worlds", default=None, help="comma-separated process counts (default 1,2,4 and 8 on 8 GPUs)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--random-data", action="store_true", help="random-token shards (no FineWeb needed)")
    parser.add_argument("--out", default="bench_comm.json")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.worker_out:
        worker(args, overrides)
        return {}

    gpus = torch.cuda.device_count()
    worlds = [int(w) for w in args.worlds.split(",")] if args.worlds else [w for w in (1, 2, 4, 8) if w <= max(gpus, 4)]
    if gpus:
        worlds = [w for w in worlds if w <= gpus]
    results, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            variants = VARIANTS if world > 1 else ONE_PROCESS
            for v in variants:
                r = launch(world, v, args, overrides, Path(tmp) / f"w{world}_{v['overlap']}_{v['shard']}.json")
                results.append(r)
                shown = {k: (round(x, 2) if isinstance(x, float) else x) for k, x in r.items() if k != "error"}
                print(json.dumps(shown) if "error" not in r else f"world {world} {v}: FAILED\n{r['error']}", flush=True)
    for world in sorted({r["world_size"] for r in results if r["world_size"] > 1}):
        by = {(r["overlap"], r["shard_optimizer"]): r for r in results if r["world_size"] == world and "error" not in r}
        on, off = by.get((True, True)), by.get((False, True))
        if on and off and off["comm_wait_ms"] > 0:
            notes.append({"world_size": world, "hidden_fraction": 1 - on["comm_wait_ms"] / off["comm_wait_ms"],
                          "optimizer_fraction_sharded": on["optimizer_fraction"],
                          "optimizer_fraction_unsharded": by[(True, False)]["optimizer_fraction"]
                          if (True, False) in by else None})
    cores = os.cpu_count() or 1
    if not gpus and any(w > cores for w in worlds):
        notes.append({"note": f"CPU with {cores} cores: world sizes above {cores} share cores, so their "
                              "timings (and hidden fractions) measure contention, not overlap"})
    plain, grouped = (next((r for r in results if r["world_size"] == 1 and "error" not in r
                            and bool(r.get("one_rank_group")) == g), None) for g in (False, True))
    if plain and grouped:
        notes.append({"world_size": 1, "one_rank_group_overhead_ms": grouped["step_ms"] - plain["step_ms"],
                      "optimizer_ms_plain": plain["optimizer_ms"], "optimizer_ms_one_rank_group": grouped["optimizer_ms"]})
    if worlds == [1] or (gpus == 1):
        notes.append({"note": "one device: nothing to reduce, shard or hide; the single-process step is measured "
                              "plain and in a one-rank group (the distributed code path with a world of one)"})
    out = {"config": args.config, "overrides": overrides, "torch_version": torch.__version__,
           "gpus": gpus, "timer": TIMERS["cuda_events" if gpus else "host"], "results": results, "summary": notes}
    atomic_write_json(args.out, out)
    for n in notes:
        print(json.dumps({k: (round(x, 3) if isinstance(x, float) else x) for k, x in n.items()}))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
