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
baddbmm), so it stays on torch.baddbmm.

This module knows kernels only: choosing between them and torch (and falling back) is
optimizers/orthogonalize.py's `iterate`. Triton is imported lazily, and the kernels are jitted on
first use, separately for the compiled (GPU) and the interpreter (`TRITON_INTERPRET=1`, CPU) mode,
whichever the environment says at that moment; importing this module never imports Triton.

The kernels are registered as torch custom ops (`torch.ops.nanogpt.ns_*`, with fake implementations
for shapes and dtypes), so `torch.compile` traces callers and calls the ops as opaque kernels. We use
`torch.library.custom_op` rather than `triton_op`: it behaves the same on CUDA and under the CPU
interpreter (so compile is tested on CPU), at the cost of one Python dispatch per op inside compiled
graphs (microseconds; the autotuned launch goes through Python either way).
"""

from __future__ import annotations  # kernel annotations such as `tl.constexpr` stay strings until Triton reads them

import functools
import os
from collections.abc import Sequence

import torch
from torch import Tensor

triton = None  # the triton module, bound by _load_triton() on first use
tl = None  # triton.language, bound by _load_triton(); the kernels below resolve `tl` from this module's globals

__all__ = ["ba_plus_caa", "polynomial_iteration", "triton_available", "xxt"]

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


@functools.cache
def _build_kernel(interpret: bool):
    """Jit and autotune the kernel for one mode (compiled or interpreted; Triton decides at jit time)."""
    _load_triton()
    return triton.autotune(_symmetric_configs(interpret), key=["M", "K", "n_batch", "HAS_C"])(
        triton.jit(_symmetric_product_kernel)
    )


def _kernel():
    return _build_kernel(_interpreting())


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
    _kernel()[grid](
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


# ---------------------------------------------------------------------------------------------------------------------
# The iteration on the kernels, and whether they can run here (the backend choice and its fallback are
# optimizers/orthogonalize.py's)
# ---------------------------------------------------------------------------------------------------------------------


def polynomial_iteration(X: Tensor, coefficients: Coefficients) -> Tensor:
    """For each (a, b, c): A = X·Xᵀ, B = b·A + c·A·A (Triton kernels), X = a·X + B·X (cuBLAS).

    X: (..., m, n), already transposed so that m <= n (the kernels are correct for m > n, only slower)
    and scaled to spectral norm <= 1. Returns X's shape and dtype.
    """
    shape = X.shape
    X = _as_batch(X)
    for a, b, c in coefficients:
        A = xxt(X)
        B = ba_plus_caa(A, b, c)
        X = torch.baddbmm(X, B, X, beta=a)
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
