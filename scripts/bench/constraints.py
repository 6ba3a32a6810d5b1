"""Time each weight-norm constraint on the 124M model's hidden matrices, next to one Muon step, and write JSON.

    python -m scripts.bench.constraints                                   # the 124M model, this device
    python -m scripts.bench.constraints --methods spectral_hard_cap,hyperball --repeat 3 --out bench_c.json
    python -m scripts.bench.constraints --config configs/smoke.toml       # a small model, for a quick look

Builds the config's model (by default configs/speedrun_124m.toml) and takes its hidden matrices (the role
"hidden": per attention block a merged (3, d, d) QKV weight and the (d, d) output projection, per block the MLP's
(4d, d) and (d, 4d)). Their values are replaced by random ones with spectral norms around 1.5·max_norm, so that
every method has something to do (the model zero-initializes its projections, and the hyperball refuses zero
matrices). Each method runs through optimizers/constraints.apply_constraint on that list, batched by shape as the
trainer will call it; the first call (cold power iteration) is reported on its own, then the median of
`--repeat` calls after `--warmup`. Next to them: one step of Muon (the config's [optim.muon] settings, plus any
dotted overrides given) on the same matrices with random gradients, timed like scripts/bench/optimizers.py.
On a CPU only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common.atomic import atomic_write_json
from common.hardware import device_name, synchronize
from distributed.process_group import resolve_device
from model import GPT
from optimizers import build_optimizer
from optimizers.constraints import CONSTRAINTS, ConstraintSettings, ConstraintState, apply_constraint
from training.config import load_config


def timed(fn, device, warmup: int, repeat: int) -> tuple[float, float]:
    """(milliseconds of the first call, median milliseconds of `repeat` calls after `warmup` more)."""
    def once() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        return 1000 * (time.perf_counter() - t0)

    first = once()
    for _ in range(warmup):
        fn()
    return first, statistics.median(once() for _ in range(repeat))


@torch.no_grad()
def random_hidden(model: GPT, max_norm: float, seed: int = 0) -> list[torch.nn.Parameter]:
    """The model's hidden matrices, refilled with Gaussian values scaled to spectral norm ~1.5·max_norm
    (a Gaussian m×n matrix has σ_max ≈ √m + √n)."""
    g = torch.Generator().manual_seed(seed)
    hidden = model.params_by_role()["hidden"]
    for p in hidden:
        m, n = p.shape[-2:]
        w = torch.randn(p.shape, generator=g, dtype=torch.float32) * (1.5 * max_norm / (m**0.5 + n**0.5))
        p.copy_(w.to(p.device, p.dtype))
    return hidden


def muon_step_ms(cfg_path: str, overrides: list[str], hidden, device, warmup: int, repeat: int) -> dict:
    """One Muon step on the hidden matrices only (random gradients), as scripts/bench/optimizers.py times it."""
    ocfg = load_config(cfg_path, [*overrides, "--optim.name=muon"]).optim
    opt = build_optimizer({"hidden": hidden}, ocfg, device)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g).to(p.device, p.dtype) for p in hidden]

    def step():
        for p, grad in zip(hidden, grads):
            p.grad = grad
        opt.step()

    first, ms = timed(step, device, warmup, repeat)
    for p in hidden:
        p.grad = None
    return {"step_ms": ms, "first_step_ms": first, "orthogonalize": ocfg.settings.orthogonalize,
            "ns_steps": ocfg.settings.ns_steps or "default"}


def bench_methods(methods: list[str], hidden, args, settings: ConstraintSettings, device) -> dict:
    results = {}
    originals = [p.detach().clone() for p in hidden]
    for name in methods:
        with torch.no_grad():
            for p, w in zip(hidden, originals):
                p.copy_(w)  # every method starts from the same matrices
        state = ConstraintState()
        first, ms = timed(lambda: apply_constraint(name, hidden, args.max_norm, state, max_update=args.max_update,
                                                   settings=settings), device, args.warmup, args.repeat)
        results[name] = {"ms": ms, "first_call_ms": first}
        print(f"{name:20s} {ms:10.2f} ms   first call {first:10.2f} ms", flush=True)
    return results


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/speedrun_124m.toml")
    parser.add_argument("--methods", default=",".join(m for m in CONSTRAINTS if m != "none"))
    parser.add_argument("--max-norm", type=float, default=1.0, help="β, the bound on σ_max")
    parser.add_argument("--max-update", type=float, default=0.05, help="the soft cap's largest update norm")
    parser.add_argument("--dtype", default="auto", help="working dtype of the caps: auto|bfloat16|float32|float64")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="bench_constraints.json")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse(argv)
    cfg = load_config(args.config, overrides)
    device = resolve_device(cfg.device, local_rank=0)
    model = GPT(cfg.model, max_seq_len=min(cfg.model.seq_len, 1024)).to(device)
    hidden = random_hidden(model, args.max_norm)
    settings = ConstraintSettings(dtype=args.dtype)
    methods = [m for m in args.methods.split(",") if m]
    shapes = {}
    for p in hidden:
        shapes[str(tuple(p.shape))] = shapes.get(str(tuple(p.shape)), 0) + 1
    muon = muon_step_ms(args.config, overrides, hidden, device, args.warmup, args.repeat)
    print(f"{'muon step':20s} {muon['step_ms']:10.2f} ms   (same matrices, {len(hidden)} tensors)", flush=True)
    results = bench_methods(methods, hidden, args, settings, device)
    for r in results.values():
        r["ratio_to_muon_step"] = r["ms"] / muon["step_ms"]
    out = {
        "device": device_name(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": args.config,
        "overrides": overrides,
        "hidden_shapes": shapes,
        "matrices": sum(p.numel() // (p.shape[-2] * p.shape[-1]) for p in hidden),
        "max_norm": args.max_norm,
        "max_update": args.max_update,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "warmup": args.warmup,
        "repeat": args.repeat,
        "muon": muon,
        "constraints": results,
    }
    atomic_write_json(args.out, out)
    print(f"\n{'method':20s} {'ms/call':>10s} {'x Muon step':>12s}   ({out['device']})")
    for name, r in results.items():
        print(f"{name:20s} {r['ms']:10.2f} {r['ratio_to_muon_step']:12.2f}")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
