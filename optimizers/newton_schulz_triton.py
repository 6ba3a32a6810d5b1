"""Triton kernels for the polynomial (Newton-Schulz-type) orthogonalization iteration.

Muon and Scion orthogonalize a matrix X (m <= n, spectral norm <= 1) by repeating, for each step's
coefficients (a, b, c),

    A = X Xᵀ              (m×m, symmetric)           -> xxt(X)
    B = b·A + c·A·A       (m×m, symmetric)           -> ba_plus_caa(A, b, c)
    X = a·X + B·X         (m×n)                      -> torch.baddbmm (cuBLAS)

The two symmetric products only need the blocks on and above the diagonal: each program computes
one upper-triangular block and writes it twice, at (i, j) and transposed at (j, i), so the result
is exactly symmetric and the work of the first two products is roughly halved. Because A is
symmetric, (A·A)[i, j] = Σ_k A[i, k] A[j, k], so the second product is the first one applied to A
(both operands read as row blocks) with the epilogue b·A + c·(.) fused in.

Grid: a program's linear id enumerates the upper-triangular block pairs (row <= col) column by
column, id = col·(col+1)/2 + row, so no program is launched for a lower block; the pair is
recovered with one square root and an exact integer correction.

The third product has no symmetry to exploit and cuBLAS already fuses the a·X term (beta of
baddbmm), so it stays on torch.baddbmm; `ax_plus_bx` is a Triton version kept for the benchmark
(`polynomial_iteration(..., third_product="triton")`).

Triton is imported lazily, and the kernels are jitted on first use, separately for the compiled
(GPU) and the interpreter (`TRITON_INTERPRET=1`, CPU) mode, whichever the environment says at that
moment; importing this module never imports Triton.

The kernels are registered as torch custom ops (`torch.ops.nanogpt.ns_*`, with fake implementations
for shapes and dtypes), so `torch.compile` traces callers and calls the ops as opaque kernels. We use
`torch.library.custom_op` rather than `triton_op`: it behaves the same on CUDA and under the CPU
interpreter (so compile is tested on CPU), at the cost of one Python dispatch per op inside compiled
graphs (microseconds; the autotuned launch goes through Python either way).
"""

from __future__ import annotations  # kernel annotations such as `tl.constexpr` stay strings until Triton reads them

import functools
import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from optimizers.orthogonalize import BACKENDS, polynomial_iteration_torch  # the torch reference of the same loop

triton = None  # the triton module, bound by _load_triton() on first use
tl = None  # triton.language, bound by _load_triton(); the kernels below resolve `tl` from this module's globals

__all__ = [
    "ax_plus_bx",
    "ba_plus_caa",
    "polynomial_iteration",
    "polynomial_iteration_auto",
    "polynomial_iteration_torch",
    "triton_available",
    "xxt",
]

Coefficients = Sequence[tuple[float, float, float]]


# ---------------------------------------------------------------------------------------------------------------------
# Kernels (plain functions here; _kernels() jits and autotunes them on first use). They call Triton builtins only,
# no @triton.jit helpers of triton.language (tl.zeros, tl.cdiv): those are jitted when triton is imported, so under
# TRITON_INTERPRET=1 set after that import they would refuse to run in the interpreter.
# ---------------------------------------------------------------------------------------------------------------------


def _symmetric_product_kernel(
    x_ptr, c_ptr, out_ptr,
    M, K, n_batch,
    stride_xb, stride_xm, stride_xk,
    stride_cb, stride_cm, stride_cn,
    stride_ob, stride_om, stride_on,
    alpha, beta,
    HAS_C: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Out[b] = alpha·X[b]·X[b]ᵀ + beta·C[b]  (beta·C only when HAS_C), X[b]: M×K, C[b] and Out[b]: M×M.

    Grid (number of upper-triangular BLOCK×BLOCK blocks, batch). Accumulates in fp32, applies the
    epilogue in fp32, rounds to Out's dtype and writes the block at (row, col) and its transpose at
    (col, row). Diagonal blocks keep their upper triangle and mirror it, so Out is exactly symmetric
    (C must be symmetric for the result to equal alpha·X·Xᵀ + beta·C; n_batch is an autotune key only).
    """
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    # Upper-triangular block pair from the linear id: pid = col·(col+1)/2 + row with 0 <= row <= col.
    col = ((tl.sqrt(8.0 * pid + 1.0) - 1.0) * 0.5).to(tl.int32)
    col = tl.where(col * (col + 1) // 2 > pid, col - 1, col)  # fix float rounding, both ways
    col = tl.where((col + 1) * (col + 2) // 2 <= pid, col + 1, col)
    row = pid - col * (col + 1) // 2

    rows = row * BLOCK + tl.arange(0, BLOCK)
    cols = col * BLOCK + tl.arange(0, BLOCK)
    ks = tl.arange(0, BLOCK_K)
    x_batch = x_ptr + batch * stride_xb
    a_ptrs = x_batch + rows[:, None] * stride_xm + ks[None, :] * stride_xk  # rows of X for the block row
    b_ptrs = x_batch + cols[:, None] * stride_xm + ks[None, :] * stride_xk  # rows of X for the block column
    acc = tl.full((BLOCK, BLOCK), 0.0, dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = (k + ks)[None, :] < K
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & k_ok, other=0.0)
        b = tl.load(b_ptrs, mask=(cols[:, None] < M) & k_ok, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_xk

    in_bounds = (rows[:, None] < M) & (cols[None, :] < M)
    acc = alpha * acc
    if HAS_C:
        c_ptrs = c_ptr + batch * stride_cb + rows[:, None] * stride_cm + cols[None, :] * stride_cn
        acc += beta * tl.load(c_ptrs, mask=in_bounds, other=0.0).to(tl.float32)
    out = acc.to(out_ptr.dtype.element_ty)
    out_t = tl.trans(out)
    out = tl.where((rows[:, None] <= cols[None, :]) | (row != col), out, out_t)  # diagonal block: mirror its upper part

    out_batch = out_ptr + batch * stride_ob
    tl.store(out_batch + rows[:, None] * stride_om + cols[None, :] * stride_on, out, mask=in_bounds)
    mirror_rows = tl.where(row != col, M, 0)  # no mirror for a diagonal block: it is already complete
    mirror_ok = (cols[:, None] < M) & (rows[None, :] < mirror_rows)
    tl.store(out_batch + cols[:, None] * stride_om + rows[None, :] * stride_on, out_t, mask=mirror_ok)


def _ax_plus_bx_kernel(
    b_ptr, x_ptr, out_ptr,
    M, N, n_batch,
    stride_bb, stride_bm, stride_bk,
    stride_xb, stride_xm, stride_xn,
    stride_ob, stride_om, stride_on,
    alpha,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Out[b] = alpha·X[b] + B[b]·X[b], B[b]: M×M, X[b] and Out[b]: M×N (a plain GEMM with a fused epilogue).

    Grid (⌈M/BLOCK_M⌉·⌈N/BLOCK_N⌉, batch); programs are ordered in groups of GROUP_M block rows so that
    consecutive programs share tiles of X in L2. fp32 accumulation and epilogue; n_batch is an autotune key only.
    """
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    blocks_m = (M + BLOCK_M - 1) // BLOCK_M
    blocks_n = (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * blocks_n)
    first_m = group * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * blocks_n)) % group_rows
    pid_n = (pid % (GROUP_M * blocks_n)) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_batch = x_ptr + batch * stride_xb
    b_ptrs = b_ptr + batch * stride_bb + rows[:, None] * stride_bm + ks[None, :] * stride_bk
    x_ptrs = x_batch + ks[:, None] * stride_xm + cols[None, :] * stride_xn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
    for k in range(0, M, BLOCK_K):
        b = tl.load(b_ptrs, mask=(rows[:, None] < M) & ((k + ks)[None, :] < M), other=0.0)
        x = tl.load(x_ptrs, mask=((k + ks)[:, None] < M) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(b, x, acc, input_precision=INPUT_PRECISION)
        b_ptrs += BLOCK_K * stride_bk
        x_ptrs += BLOCK_K * stride_xm

    in_bounds = (rows[:, None] < M) & (cols[None, :] < N)
    x_here = tl.load(x_batch + rows[:, None] * stride_xm + cols[None, :] * stride_xn, mask=in_bounds, other=0.0)
    acc += alpha * x_here.to(tl.float32)
    out_ptrs = out_ptr + batch * stride_ob + rows[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=in_bounds)


# ---------------------------------------------------------------------------------------------------------------------
# Lazy Triton import, jitting and autotuning
# ---------------------------------------------------------------------------------------------------------------------


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _load_triton():
    """Import triton (binding this module's `triton` and `tl`); ImportError says how to get it."""
    global triton, tl
    if triton is None:
        try:
            import triton as triton_module
            import triton.language as language
        except ImportError as e:
            raise ImportError(f"the Triton Newton-Schulz kernels need triton (pip install triton): {e}") from e
        triton, tl = triton_module, language
    return triton


def _symmetric_configs(interpret: bool) -> list:
    """Square blocks (the triangle mapping needs them). Hopper: 128×128×64 tiles with 8 warps and 3–4
    stages lead; 64×64 tiles keep all SMs busy when m is small (768 -> 78 blocks per matrix)."""
    if interpret:  # one small config: autotuning under the interpreter would run every config on CPU
        return [triton.Config({"BLOCK": 32, "BLOCK_K": 32}, num_warps=1, num_stages=1)]
    shapes = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 4), (128, 128, 8, 3), (64, 64, 4, 4), (64, 128, 4, 3)]
    return [triton.Config({"BLOCK": b, "BLOCK_K": k}, num_warps=w, num_stages=s) for b, k, w, s in shapes]


def _gemm_configs(interpret: bool) -> list:
    """Hopper GEMM tiles for the third product: 128×256 and 128×128 with 64-wide K steps lead."""
    if interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=1, num_stages=1)]
    shapes = [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in shapes
    ]


class _Kernels(NamedTuple):
    symmetric_product: object
    ax_plus_bx: object


@functools.cache
def _build_kernels(interpret: bool) -> _Kernels:
    """Jit and autotune the kernels for one mode (compiled or interpreted; Triton decides at jit time)."""
    _load_triton()
    symmetric = triton.autotune(_symmetric_configs(interpret), key=["M", "K", "n_batch", "HAS_C"])(
        triton.jit(_symmetric_product_kernel)
    )
    gemm = triton.autotune(_gemm_configs(interpret), key=["M", "N", "n_batch"])(triton.jit(_ax_plus_bx_kernel))
    return _Kernels(symmetric, gemm)


def _kernels() -> _Kernels:
    return _build_kernels(_interpreting())


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 operands follow torch's matmul precision setting (tf32 unless "highest"); 16-bit ones ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _triangle_blocks(m: int, block: int) -> int:
    """Number of BLOCK×BLOCK blocks on and above the diagonal of an m×m matrix."""
    t = _cdiv(m, block)
    return t * (t + 1) // 2


# ---------------------------------------------------------------------------------------------------------------------
# Launchers and custom ops
# ---------------------------------------------------------------------------------------------------------------------


def _as_batch(X: Tensor) -> Tensor:
    """View (..., m, n) as (batch, m, n); the matrix strides are kept (the kernels take strides)."""
    if X.ndim < 2:
        raise ValueError(f"expected a matrix or a batch of matrices, got shape {tuple(X.shape)}")
    return X.reshape(-1, *X.shape[-2:])


def _symmetric_product(X: Tensor, C: Tensor | None, alpha: float, beta: float) -> Tensor:
    """alpha·X·Xᵀ + beta·C over the last two dims (only upper blocks computed, mirrored)."""
    X3 = _as_batch(X)
    batch, m, k = X3.shape
    out = torch.empty(batch, m, m, dtype=X.dtype, device=X.device)
    if out.numel() == 0:
        return out.reshape(*X.shape[:-1], m)
    C3 = _as_batch(C) if C is not None else out  # any tensor serves as the unused pointer when HAS_C is False
    grid = lambda meta: (_triangle_blocks(m, meta["BLOCK"]), batch)  # noqa: E731
    _kernels().symmetric_product[grid](
        X3, C3, out, m, k, batch, *X3.stride(), *C3.stride(), *out.stride(), float(alpha), float(beta),
        HAS_C=C is not None, INPUT_PRECISION=_input_precision(X.dtype),
    )
    return out.reshape(*X.shape[:-1], m)


@torch.library.custom_op("nanogpt::ns_xxt", mutates_args=())
def _xxt_op(X: Tensor) -> Tensor:
    return _symmetric_product(X, None, 1.0, 0.0)


@_xxt_op.register_fake
def _(X: Tensor) -> Tensor:
    return X.new_empty(*X.shape[:-1], X.shape[-2])


@torch.library.custom_op("nanogpt::ns_ba_plus_caa", mutates_args=())
def _ba_plus_caa_op(A: Tensor, b: float, c: float) -> Tensor:
    return _symmetric_product(A, A, c, b)


@_ba_plus_caa_op.register_fake
def _(A: Tensor, b: float, c: float) -> Tensor:
    return A.new_empty(A.shape)


@torch.library.custom_op("nanogpt::ns_ax_plus_bx", mutates_args=())
def _ax_plus_bx_op(X: Tensor, B: Tensor, a: float) -> Tensor:
    X3, B3 = _as_batch(X), _as_batch(B)
    batch, m, n = X3.shape
    out = torch.empty(batch, m, n, dtype=X.dtype, device=X.device)
    if out.numel() == 0:
        return out.reshape(X.shape)
    grid = lambda meta: (_cdiv(m, meta["BLOCK_M"]) * _cdiv(n, meta["BLOCK_N"]), batch)  # noqa: E731
    _kernels().ax_plus_bx[grid](
        B3, X3, out, m, n, batch, *B3.stride(), *X3.stride(), *out.stride(), float(a),
        INPUT_PRECISION=_input_precision(X.dtype),
    )
    return out.reshape(X.shape)


@_ax_plus_bx_op.register_fake
def _(X: Tensor, B: Tensor, a: float) -> Tensor:
    return X.new_empty(X.shape)


def _check_square(A: Tensor) -> None:
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"expected square (symmetric) matrices (..., m, m), got shape {tuple(A.shape)}")


def xxt(X: Tensor) -> Tensor:
    """A = X·Xᵀ for X of shape (..., m, n): (..., m, m) in X's dtype, fp32 accumulation, exactly symmetric."""
    return _xxt_op(X)


def ba_plus_caa(A: Tensor, b: float, c: float) -> Tensor:
    """B = b·A + c·A·A for symmetric A (..., m, m): same shape and dtype, fp32 accumulation, exactly symmetric."""
    _check_square(A)
    return _ba_plus_caa_op(A, float(b), float(c))


def ax_plus_bx(X: Tensor, B: Tensor, a: float) -> Tensor:
    """a·X + B·X for X (..., m, n) and B (..., m, m), with the Triton GEMM (torch.baddbmm does the same)."""
    _check_square(B)
    if B.shape[:-2] != X.shape[:-2] or B.shape[-1] != X.shape[-2]:
        raise ValueError(f"B {tuple(B.shape)} does not multiply X {tuple(X.shape)}")
    return _ax_plus_bx_op(X, B, float(a))


# ---------------------------------------------------------------------------------------------------------------------
# The iteration: Triton, torch reference, and the backend choice with its fallback
# ---------------------------------------------------------------------------------------------------------------------


def polynomial_iteration(X: Tensor, coefficients: Coefficients, *, third_product: str = "baddbmm") -> Tensor:
    """For each (a, b, c): A = X·Xᵀ, B = b·A + c·A·A, X = a·X + B·X, with the Triton kernels.

    X: (..., m, n), already transposed so that m <= n (the kernels are correct for m > n, only slower)
    and scaled to spectral norm <= 1. Returns X's shape and dtype. `third_product` is "baddbmm"
    (cuBLAS, the default) or "triton" (the `ax_plus_bx` kernel).
    """
    if third_product not in ("baddbmm", "triton"):
        raise ValueError(f"third_product must be 'baddbmm' or 'triton', got {third_product!r}")
    shape = X.shape
    X = _as_batch(X)
    for a, b, c in coefficients:
        A = xxt(X)
        B = ba_plus_caa(A, b, c)
        X = torch.baddbmm(X, B, X, beta=a) if third_product == "baddbmm" else ax_plus_bx(X, B, a)
    return X.reshape(shape)


def triton_available() -> tuple[bool, str]:
    """(True, how) when the Triton path can run here: triton imports, and a CUDA device is present or
    TRITON_INTERPRET=1 (the CPU interpreter); otherwise (False, why)."""
    try:
        _load_triton()
    except ImportError as e:
        return False, str(e)
    if _interpreting():
        return True, f"triton {triton.__version__} in interpreter mode (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)"


_fallback_reason: str | None = None  # set when the Triton path failed once; "auto" then uses torch for good


def _triton_device(X: Tensor) -> bool:
    """Whether backend="auto" would use Triton for X's device (CUDA only; the interpreter is for tests)."""
    return X.device.type == "cuda"


def _fall_back(reason: str) -> None:
    global _fallback_reason
    _fallback_reason = reason
    warnings.warn(
        f"Newton-Schulz: using the torch implementation instead of the Triton kernels from now on: {reason}",
        RuntimeWarning,
        stacklevel=3,
    )


def polynomial_iteration_auto(X: Tensor, coefficients: Coefficients, backend: str = "auto") -> Tensor:
    """The iteration with a backend: "torch"; "triton" (raises when Triton cannot run here or a kernel
    fails); or "auto": Triton for CUDA tensors and torch elsewhere, falling back to torch for the rest
    of the process, with one warning saying why, if Triton is missing or a kernel fails."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return polynomial_iteration_torch(X, coefficients)
    if backend == "triton":
        ok, why = triton_available()
        if not ok:
            raise RuntimeError(f"backend='triton' was requested but Triton cannot run here: {why}")
        return polynomial_iteration(X, coefficients)
    if not _triton_device(X) or _fallback_reason is not None:
        return polynomial_iteration_torch(X, coefficients)
    ok, why = triton_available()
    if not ok:
        _fall_back(why)
        return polynomial_iteration_torch(X, coefficients)
    try:
        return polynomial_iteration(X, coefficients)
    except Exception as e:  # compile or launch failure: never leave the caller without an answer
        _fall_back(f"the Triton kernels failed ({type(e).__name__}: {e})")
        return polynomial_iteration_torch(X, coefficients)
