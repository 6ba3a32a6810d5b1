"""Measure what the distributed machinery buys: gradient-reduction overlap and sharded orthogonalization.

    python scripts/bench_comm.py                                  # CPU gloo: smoke model, 1, 2 and 4 processes
    python scripts/bench_comm.py --config configs/speedrun_124m.toml --random-data --worlds 1,8   # 8 GPUs

For every world size, and for every combination of distributed.overlap (reductions start during
backward, or only after it) and distributed.shard_optimizer (each rank orthogonalizes its share,
or every rank all matrices), it launches `torchrun --nproc_per_node=W` on this script in worker
mode, times `--steps` training steps after `--warmup`, and records (rank 0, mean per step):

    step_ms              the whole step
    forward_backward_ms  micro-batches, forward and backward (reductions started inside it)
    optimizer_ms         from the end of backward to updated weights (waits, orthogonalization, gathers)
    comm_wait_ms         time blocked waiting for reductions: what the overlap did not hide

and derives optimizer_fraction = optimizer_ms / step_ms and, per world size,
hidden_fraction = 1 − comm_wait(overlap on) / comm_wait(overlap off). Writes one JSON file.
On one GPU (or one process) only the single-process step can be measured: there is nothing to
reduce, shard or hide; the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.atomic import atomic_write_json  # noqa: E402

VARIANTS = [dict(overlap=o, shard=s) for o in (True, False) for s in (True, False)]


def worker(args, overrides) -> None:
    from scripts.bench_step import random_shards
    from training.run_data import prepare_data
    from training.trainer import Trainer
    from training.config import load_config, validate
    from training.distributed import env_world_size, init_distributed, shutdown
    from training.hardware import device_name, synchronize

    cfg = load_config(args.config, overrides)
    world = env_world_size()
    rows = cfg.data.batch_tokens // cfg.model.seq_len
    if rows % (world * cfg.data.micro_batch_size) and rows % world == 0:  # keep the global batch: fewer rows per rank
        cfg = load_config(args.config, [*overrides, f"--data.micro_batch_size={rows // world}"])
    validate(cfg, world)
    info = init_distributed(cfg.device, cfg.distributed.timeout_s)
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_data:
            need = (args.warmup + args.steps + 2) * (cfg.data.batch_tokens + cfg.model.seq_len * info.world_size * 2)
            files = random_shards(Path(tmp), cfg.model.vocab_size, need) if info.is_main else None
            from training.distributed import barrier, broadcast_object

            barrier(info)
            files = broadcast_object(files, info)
        else:
            files, _ = prepare_data(cfg, info, lambda *_: None)
        trainer = Trainer(cfg, info)
        trainer.build(files)
        at = cfg.schedule.steps // 2
        rows = []
        for i in range(args.warmup + args.steps):
            wait0 = trainer.sync.comm_wait_s if trainer.sync else 0.0
            synchronize(info.device)
            t0 = time.perf_counter()
            trainer.forward_backward(at)
            synchronize(info.device)
            t1 = time.perf_counter()
            trainer.optimizer_step(at)
            synchronize(info.device)
            t2 = time.perf_counter()
            wait = (trainer.sync.comm_wait_s if trainer.sync else 0.0) - wait0
            if i >= args.warmup:
                rows.append((t1 - t0, t2 - t1, wait))
    if info.is_main:
        mean = lambda xs: 1000 * statistics.mean(xs)  # noqa: E731
        fb, opt, wait = (mean([r[k] for r in rows]) for k in range(3))
        result = dict(world_size=info.world_size, device=device_name(info.device, info.world_size),
                      overlap=cfg.distributed.overlap, shard_optimizer=cfg.distributed.shard_optimizer,
                      step_ms=fb + opt, forward_backward_ms=fb, optimizer_ms=opt, comm_wait_ms=wait,
                      optimizer_fraction=opt / (fb + opt), orthogonalized_by_rank0=trainer.orthogonalized)
        atomic_write_json(args.worker_out, result)
    shutdown()


def launch(world: int, variant: dict, args, overrides, out_file: Path) -> dict:
    flags = [f"--distributed.overlap={str(variant['overlap']).lower()}",
             f"--distributed.shard_optimizer={str(variant['shard']).lower()}"]
    inner = [str(Path(__file__).resolve()), "--worker-out", str(out_file), "--config", args.config,
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
            variants = VARIANTS if world > 1 else [dict(overlap=True, shard=True)]
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
    if worlds == [1] or (gpus == 1):
        notes.append({"note": "one device: nothing to reduce, shard or hide; only the single-process step is measured"})
    out = {"config": args.config, "overrides": overrides, "torch_version": torch.__version__,
           "gpus": gpus, "results": results, "summary": notes}
    atomic_write_json(args.out, out)
    for n in notes:
        print(json.dumps({k: (round(x, 3) if isinstance(x, float) else x) for k, x in n.items()}))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
