"""How many small runs to pack onto one device at once: a benchmark's run, started k times side by side, for
each k, and the throughput they reach together.

    python -m scripts.bench.packing --spec configs/benchmarks/cpu_shakespeare.toml --packs 1,2,4 --out packing.json
    python -m scripts.bench.packing --spec configs/benchmarks/gpu_shakespeare_packed.toml --packs 1,4,8,16   # one GPU

Each pack launches k copies of the spec's first optimizer's run (its base config, overrides and extras, the
default lr, `--steps` steps) exactly as the sweep runner launches them: on the CPU each with
OMP_NUM_THREADS = cores / k (at least 1), on a GPU all on the same one. It records the wall time from the first
launch to the last exit and each run's training time (summary.json), and derives

    steps_per_s          k x steps / wall: what a sweep of such runs gets, start-up included
    train_steps_per_s    k x steps / the slowest run's training time: the packed steady state
    speedup              each against the first pack listed (k = 1 by default)

A pack whose speed-up stops growing has filled the device: that k is the spec's `slots` (CPU) or
`runs_per_gpu` (GPU). Writes one JSON file with the device named; prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.atomic import atomic_write_json
from common.hardware import cpu_model
from scripts.studies.benchmark_spec import default_lr, load_benchmark, phase_spec
from scripts.studies.runner import TRAIN_SCRIPT, Slot, SweepDir, launch_command
from scripts.studies.spec import plan_runs


def pack(spec, k: int, steps: int, gpu: str | None, folder: Path) -> dict:
    """Run k copies of the run at once; their wall time and training times."""
    bench = spec
    name = bench.optimizers[0]
    centre = default_lr(bench, name) if bench.search_roles == "main" else 1.0
    phase = phase_spec(bench, {name: (centre,)}, (steps,), (0,))
    run = plan_runs(phase)[0]
    sweep = SweepDir(folder / f"pack{k}")
    procs = []
    start = time.perf_counter()
    for i in range(k):
        copy = dataclasses.replace(run, run_id=f"{run.run_id}_copy{i}")
        command, env = launch_command(copy, phase, sweep, Slot((gpu,) if gpu else ()), TRAIN_SCRIPT, resume=False)
        if not gpu:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // k))
        log = open(folder / f"pack{k}_{i}.err", "w")  # a file, not a pipe: no run waits on a full pipe
        procs.append((subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log), log))
    for proc, log in procs:
        proc.wait()
        log.close()
    wall = time.perf_counter() - start
    failed = [i for i, (proc, _) in enumerate(procs) if proc.returncode]
    if failed:
        raise SystemExit(f"a run of the pack of {k} failed:\n{(folder / f'pack{k}_{failed[0]}.err').read_text()[-2000:]}")
    train = [json.loads((sweep.runs / f"{run.run_id}_copy{i}" / "summary.json").read_text())["train_time_ms"] / 1000
             for i in range(k)]
    return {"runs": k, "steps": steps, "wall_s": round(wall, 2), "train_s": [round(t, 2) for t in train],
            "steps_per_s": k * steps / wall, "train_steps_per_s": k * steps / max(train)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=Path("configs/benchmarks/cpu_shakespeare.toml"))
    parser.add_argument("--packs", default="1,2,4", help="comma-separated numbers of runs at once")
    parser.add_argument("--steps", type=int, default=50, help="training steps of each run")
    parser.add_argument("--gpu", help="the GPU id to pack onto (default: the CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench_packing.json"))
    args = parser.parse_args(argv)
    spec = load_benchmark(args.spec)
    packs = [int(k) for k in args.packs.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in packs:
            results.append(pack(spec, k, args.steps, args.gpu, Path(tmp)))
            r = results[-1]
            r["speedup"] = r["steps_per_s"] / results[0]["steps_per_s"]
            r["train_speedup"] = r["train_steps_per_s"] / results[0]["train_steps_per_s"]
            print(f"{k:>3} at once: wall {r['wall_s']:7.1f} s  {r['steps_per_s']:7.2f} steps/s (x{r['speedup']:.2f})  "
                  f"training {r['train_steps_per_s']:7.2f} steps/s (x{r['train_speedup']:.2f})", flush=True)
    device = f"GPU {args.gpu}" if args.gpu else f"CPU {cpu_model() or 'unknown'}, {os.cpu_count()} cores"
    if args.gpu:
        import torch

        device = torch.cuda.get_device_name(int(args.gpu)) if torch.cuda.is_available() else device
    data = {"spec": str(args.spec), "optimizer": spec.optimizers[0], "device": device, "packs": results,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(args.out, data)
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
