"""Time a full 5-step quintic orthogonalization (normalize + iterations) several ways and write JSON.

    python -m scripts.bench.newton_schulz --out bench_newton_schulz.json          # on a GPU, bf16
    TRITON_INTERPRET=1 python -m scripts.bench.newton_schulz --quick              # smoke test on CPU

Variants: "torch" (plain matmuls and elementwise ops: A = X@Xᵀ, B = b·A + c·(A@A), X = a·X + B@X),
"torch_baddbmm" (the library's torch path, optimizers/orthogonalize.py: the elementwise terms fused
into torch.baddbmm), "compiled" (torch.compile of the library's torch path), "triton" (the symmetric
Triton kernels of optimizers/newton_schulz_triton.py, third product on torch.baddbmm).
Every variant gets its input as the library prepares it (tall matrices transposed, normalized,
contiguous). Shapes are the 124M model's hidden matrices as the optimizer batches them, (48, 768, 768),
(12, 768, 3072) and (12, 3072, 768) (tall: transposed to 768×3072 inside), and square widths 1024
to 8192. Reports the median time over `--repeats` runs after `--warmup` (CUDA events on GPU), the
achieved TFLOP/s counting the dense algorithm's FLOPs (per step 2m²n for X·Xᵀ, 2m³ for A·A and 2m²n
for B·X; elementwise terms ignored), the speedups torch/triton and compiled/triton (>1: Triton is
faster; also against torch_baddbmm when run), and each variant's largest deviation from "torch". On CPU the Triton variants run
only under TRITON_INTERPRET=1 (and are slow); use --quick there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common.atomic import atomic_write_json
from optimizers.newton_schulz_triton import polynomial_iteration, triton_available
from optimizers.orthogonalize import coefficients, polynomial_iteration_torch

SHAPES = [(48, 768, 768), (12, 768, 3072), (12, 3072, 768), (1, 1024, 1024), (1, 2048, 2048), (1, 4096, 4096),
          (1, 8192, 8192)]
QUICK_SHAPES = [(2, 32, 32), (2, 32, 64), (2, 64, 32)]
VARIANTS = ("torch", "torch_baddbmm", "compiled", "triton")
BASELINES = ("torch", "torch_baddbmm", "compiled")


def orthogonalize(G: torch.Tensor, iterate, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """As optimizers/orthogonalize.py prepares the input (tall matrices transposed, divided by the
    Frobenius norm, contiguous), then `steps` Newton–Schulz steps with `iterate`."""
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) + eps)).contiguous()
    X = iterate(X, coefficients("newton_schulz", steps))
    return X.mT if tall else X


def iterate_matmul(X, coeffs):
    """The iteration in plain matmuls and elementwise ops: the unfused reference."""
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X


def orthogonalize_torch(G, steps):
    return orthogonalize(G, iterate_matmul, steps)


def orthogonalize_torch_baddbmm(G, steps):
    return orthogonalize(G, polynomial_iteration_torch, steps)


def orthogonalize_triton(G, steps):
    return orthogonalize(G, polynomial_iteration, steps)


def dense_flops(shape: tuple[int, int, int], steps: int) -> int:
    """FLOPs of the dense algorithm: per step 2m²n (X·Xᵀ) + 2m³ (A·A) + 2m²n (B·X), m <= n."""
    batch, rows, cols = shape
    m, n = min(rows, cols), max(rows, cols)
    return batch * steps * (4 * m * m * n + 2 * m**3)


def median_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in milliseconds: CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def variant_functions(variants: list[str], compile_mode: str | None) -> dict:
    if "compiled" in variants:
        limits = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):  # one compilation per shape
            if hasattr(limits, name):
                setattr(limits, name, max(getattr(limits, name), 64))
    table = {
        "torch": orthogonalize_torch,
        "torch_baddbmm": orthogonalize_torch_baddbmm,
        "compiled": torch.compile(orthogonalize_torch_baddbmm, dynamic=False, mode=compile_mode),
        "triton": orthogonalize_triton,
    }
    return {v: table[v] for v in variants}


def bench_shape(shape, functions, device, dtype, steps, warmup, repeats) -> dict:
    G = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    flops = dense_flops(shape, steps)
    row: dict = {"shape": list(shape), "gflop": flops / 1e9}
    reference = None
    for name, fn in functions.items():
        try:
            out = fn(G, steps)
            ms = median_ms(lambda: fn(G, steps), device, warmup, repeats)
        except Exception as e:  # record the failure (e.g. a kernel that does not compile) and go on
            row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:500]
            continue
        row[f"{name}_ms"] = ms
        row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12
        if name == "torch":
            reference = out.float()
        elif reference is not None:
            row[f"{name}_max_abs_diff_vs_torch"] = (out.float() - reference).abs().max().item()
    for base in BASELINES:
        if f"{base}_ms" in row and "triton_ms" in row:
            row[f"speedup_triton_vs_{base}"] = row[f"{base}_ms"] / row["triton_ms"]
    return row


def print_table(rows: list[dict], variants: list[str]) -> None:
    header = f"{'shape':>18} {'GFLOP':>8}" + "".join(f" {v + ' ms':>15} {'TFLOP/s':>8}" for v in variants)
    header += "".join(f" {b + '/triton':>{len(b) + 7}}" for b in BASELINES)
    print(header)
    for row in rows:
        line = f"{'x'.join(map(str, row['shape'])):>18} {row['gflop']:8.1f}"
        for v in variants:
            ms, tf = row.get(f"{v}_ms"), row.get(f"{v}_tflops")
            missing = "failed" if f"{v}_error" in row else "-"
            line += f" {ms:15.3f} {tf:8.1f}" if ms is not None else f" {missing:>15} {'':>8}"
        for base in BASELINES:
            s, width = row.get(f"speedup_triton_vs_{base}"), len(base) + 7
            line += f" {s:{width}.2f}" if s is not None else f" {'-':>{width}}"
        print(line)
    for row in rows:
        for key, value in row.items():
            if key.endswith("_error"):
                print(f"{'x'.join(map(str, row['shape']))} {key}: {value}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (CPU smoke test)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--shapes", default=None, help="override, e.g. 12x768x3072,1x4096x4096")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU (the interpreter garbles bf16)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs (default 5, quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 20, quick 2)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode for 'compiled' (default: default)")
    parser.add_argument("--out", default="bench_newton_schulz.json")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    triton_ok, triton_why = triton_available()
    if not triton_ok:
        print(f"skipping the Triton variants: {triton_why}")
        variants = [v for v in variants if not v.startswith("triton")]

    functions = variant_functions(variants, args.compile_mode)
    rows = [bench_shape(s, functions, device, dtype, args.steps, warmup, repeats) for s in shapes]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "steps": args.steps,
        "coefficients": list(coefficients("newton_schulz", 1)[0]),
        "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__,
        "triton": triton_why,
        "variants": variants,
        "rows": rows,
    }
    print(f"{result['device']}, {result['dtype']}, {args.steps} quintic steps, median of {repeats}")
    print_table(rows, variants)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
