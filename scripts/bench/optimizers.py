"""Time one optimizer step of each optimizer against one forward+backward, and write JSON.

    python -m scripts.bench.optimizers                                   # the 124M model, this device
    python -m scripts.bench.optimizers --seq-len 1024 --out bench_opt_cpu.json   # a CPU-sized input
    python -m scripts.bench.optimizers --config configs/smoke.toml

Builds the config's model (by default configs/speedrun_124m.toml, so the parameter shapes are the
124M model's), times forward+backward on one row of `--seq-len` tokens (default: the config's
model.seq_len, 48Ki tokens per GPU for the record), then for each optimizer of `--optimizers`
(default muon, scion, adamw, signum, each with its defaults plus any dotted overrides given, e.g.
`--optim.orthogonalize=polar_express`) times one step on those gradients. Reports milliseconds (median of `--repeat` after `--warmup`) and the ratio
step / (forward+backward). Single device: the distributed issue divides the optimizer work.
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
from training.config import load_config
from training.trainer import autocast


def timed(fn, device, warmup: int, repeat: int) -> float:
    """Median milliseconds of fn() over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/speedrun_124m.toml")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens of the forward+backward (one row)")
    parser.add_argument("--optimizers", default="muon,scion,adamw,signum")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", default="bench_optimizers.json")
    args, overrides = parser.parse_known_args(argv)

    cfg = load_config(args.config, overrides)
    device = resolve_device(cfg.device, local_rank=0)
    seq_len = args.seq_len or cfg.model.seq_len
    torch.manual_seed(0)
    model = GPT(cfg.model, max_seq_len=seq_len).to(device)
    forward = torch.compile(model, dynamic=False) if device.type == "cuda" and cfg.model.compile else model
    idx = torch.randint(0, cfg.model.vocab_size, (1, seq_len), device=device)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with autocast(cfg, device):
            loss = forward(idx, idx)
        loss.backward()

    fb_ms = timed(fwd_bwd, device, args.warmup, args.repeat)
    grads = {p: p.grad.clone() for p in model.parameters()}
    results = {}
    for name in args.optimizers.split(","):
        ocfg = load_config(args.config, [*overrides, f"--optim.name={name}"]).optim
        opt = build_optimizer(model.params_by_role(), ocfg, device)

        def step(opt=opt):
            for p, g in grads.items():
                p.grad = g
            opt.step()

        ms = timed(step, device, args.warmup, args.repeat)
        results[name] = {"step_ms": ms, "ratio_to_fwd_bwd": ms / fb_ms,
                         "orthogonalize": getattr(ocfg.settings, "orthogonalize", None)}
        print(f"{name:8s} step {ms:9.2f} ms   {100 * ms / fb_ms:6.1f}% of forward+backward", flush=True)
        del opt
    out = {
        "device": device_name(device),
        "torch_version": torch.__version__,
        "config": args.config,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_matrix_shapes": sorted({str(tuple(p.shape)) for p in model.params_by_role()["hidden"]}),
        "seq_len": seq_len,
        "compile": forward is not model,
        "forward_backward_ms": fb_ms,
        "optimizers": results,
    }
    atomic_write_json(args.out, out)
    print(f"forward+backward {fb_ms:.2f} ms on {seq_len} tokens ({out['device']}); wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
