"""Orthogonalization: G = U S Vᵀ  ->  approximately U Vᵀ, for a batch of matrices (..., m, n).

Every iterative method here works on X = G / ‖G‖_F (so the spectral norm is at most 1), with
tall matrices transposed so that X Xᵀ is the smaller Gram matrix, and repeats

    A = X Xᵀ,    X <- a·X + (b·A + c·A²)·X

which maps each singular value s to p(s) = a·s + b·s³ + c·s⁵ and leaves the singular vectors alone.
The methods differ only in the coefficients (a, b, c) of each step:

    newton_schulz    Muon's quintic (3.4445, −4.7750, 2.0315) every step (default 5 steps). It trades
                     exactness for speed: p has no fixed point at 1 (p(1) = 0.701); after 5 steps the
                     normalized singular values >= 0.01 lie in [0.682, 1.134], and the largest value over
                     all inputs is p's maximum, p(0.5545) = 1.20237, reached after 5 steps from s ≈ 4.1e-3
                     (`largest_singular_value` computes it from the coefficients).
    polar_express    Amsel et al. (2025), "The Polar Express": a different, minimax-optimal triple per
                     step (computed for singular values in [1e-3, 1]), with the paper's safety factor:
                     the input is divided by 1.02·‖G‖_F. Steps beyond the table repeat its last row.
    cubic            the classic Newton–Schulz iteration X <- 1.5·X − 0.5·X Xᵀ X, i.e. (1.5, −0.5, 0);
                     converges to exactly 1 from below, slowly for small singular values (default 12).
    modular_quintic  the modular-duality paper's quintic (2, −1.5, 0.5): p(1) = 1, p'(1) = 0 but p''(1) = 1,
                     so near 1 the error shrinks quadratically, p(1 − e) ≈ 1 + e²/2, and from above: p
                     overshoots 1, to p(0.894) = 1.00176, so it does not converge from below (default 8 steps;
                     track 3's Muon baseline runs 12).
    monotone_quintic (15/8, −5/4, 3/8): p(1) = 1, p'(1) = p''(1) = 0 and p' = 15(1 − s²)²/8 >= 0, so p is
                     increasing on [0, 1] and never exceeds 1: it converges to 1 from below, cubically,
                     p(1 − e) ≈ 1 − 2.5e³ (default 8 steps; the hard cap's polish, optimizers/constraint_methods.py).
    svd              exact U Vᵀ from torch.linalg.svd, the reference (computed in float32 or float64).

The iteration runs in `dtype`: bfloat16 on CUDA and float32 elsewhere (float64 for float64 inputs)
unless the caller chooses.
`backend` picks the implementation of the iteration, here and nowhere else (`iterate`): "torch"
(matmuls), "triton" (the symmetric kernels of optimizers/newton_schulz_triton.py, which knows
kernels only) or "auto": Triton for CUDA tensors, torch elsewhere; if Triton is missing or a kernel
fails, "auto" falls back to torch for the rest of the process, with one warning saying why.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from optimizers import newton_schulz_triton as triton_kernels  # imports Triton itself only on first use

MUON_QUINTIC = (3.4445, -4.7750, 2.0315)
CUBIC = (1.5, -0.5, 0.0)
MODULAR_QUINTIC = (2.0, -1.5, 0.5)
MONOTONE_QUINTIC = (15 / 8, -5 / 4, 3 / 8)
# Polar Express, degree 5, five steps, safety factor 1.02 (the coefficients modded-nanogpt ships)
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02

DEFAULT_STEPS = {"newton_schulz": 5, "polar_express": 5, "cubic": 12, "modular_quintic": 8, "monotone_quintic": 8}
METHODS = (*DEFAULT_STEPS, "svd")
BACKENDS = ("auto", "torch", "triton")


def coefficients(method: str, steps: int | None = None) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each step of an iterative method."""
    if method not in DEFAULT_STEPS:
        raise ValueError(f"unknown orthogonalization method {method!r}; choose from {', '.join(METHODS)}")
    steps = DEFAULT_STEPS[method] if steps is None else steps
    if steps < 1:
        raise ValueError(f"orthogonalization needs at least one step, got {steps}")
    if method == "polar_express":
        return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    fixed = {"newton_schulz": MUON_QUINTIC, "cubic": CUBIC, "modular_quintic": MODULAR_QUINTIC,
             "monotone_quintic": MONOTONE_QUINTIC}[method]
    return [fixed] * steps


def largest_singular_value(method: str, steps: int | None = None) -> float:
    """The largest singular value an iterative method leaves, over every input: the maximum over s in [0, 1]
    of the composed polynomial (normalized inputs have singular values in [0, 1]); 1.0 for svd. From the
    coefficients, on a grid dense in log and linear scale (the maximum may come from tiny s) refined by golden
    section: Muon's 5-step quintic gives 1.20237."""
    if method == "svd":
        return 1.0
    coeffs = coefficients(method, steps)
    safety = POLAR_EXPRESS_SAFETY if method == "polar_express" else 1.0

    def image(s):
        for a, b, c in coeffs:
            s = a * s + b * s**3 + c * s**5
        return s

    f64 = dict(dtype=torch.float64)
    grid = torch.cat([torch.logspace(-9, 0, 20001, **f64), torch.linspace(0, 1, 20001, **f64)])
    grid = grid[grid <= 1 / safety]  # the input divided by safety x its norm: singular values <= 1/safety
    values = image(grid)
    i = int(values.argmax())
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    ratio = (5**0.5 - 1) / 2
    for _ in range(100):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if image(torch.tensor(a, dtype=torch.float64)) > image(torch.tensor(b, dtype=torch.float64)) \
            else (a, hi)
    return max(float(values.max()), float(image(torch.tensor((lo + hi) / 2, dtype=torch.float64))))


def polynomial_iteration_torch(X: Tensor, coeffs) -> Tensor:
    """X (..., m, n) with m <= n and spectral norm <= 1: per step, X <- a X + (b A + c A²) X."""
    shape = X.shape
    X = X.reshape(-1, *shape[-2:])
    for a, b, c in coeffs:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b·A + c·A·A
        X = torch.baddbmm(X, B, X, beta=a)  # a·X + B·X
    return X.reshape(shape)


_fallback_reason: str | None = None  # set when the Triton path failed once: "auto" then uses torch for good


def _triton_device(X: Tensor) -> bool:
    """Whether "auto" runs X on the Triton kernels: CUDA tensors only (the interpreter is for tests)."""
    return X.is_cuda


def iterate(X: Tensor, coeffs, backend: str = "auto") -> Tensor:
    """The polynomial iteration on X (..., m, n), m <= n, spectral norm <= 1, on the chosen backend:
    "torch"; "triton" (raises when Triton cannot run here); or "auto" (Triton for CUDA tensors,
    falling back to torch once, with a warning, if Triton is missing or a kernel fails)."""
    global _fallback_reason
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "torch" or (backend == "auto" and (not _triton_device(X) or _fallback_reason is not None)):
        return polynomial_iteration_torch(X, coeffs)
    ok, why = triton_kernels.triton_available()
    if backend == "triton":
        if not ok:
            raise RuntimeError(f"backend='triton' was requested but Triton cannot run here: {why}")
        return triton_kernels.polynomial_iteration(X, coeffs)
    if ok:
        try:
            return triton_kernels.polynomial_iteration(X, coeffs)
        except Exception as e:  # compile or launch failure: never leave the caller without an answer
            why = f"the Triton kernels failed ({type(e).__name__}: {e})"
    _fallback_reason = why
    warnings.warn(f"Newton-Schulz: using the torch implementation instead of the Triton kernels from now on: {why}",
                  RuntimeWarning, stacklevel=2)
    return polynomial_iteration_torch(X, coeffs)


def orthogonalize(G: Tensor, method: str = "newton_schulz", steps: int | None = None, *,
                  dtype: torch.dtype | None = None, backend: str = "auto", eps: float = 1e-7,
                  keep_dtype: bool = False) -> Tensor:
    """Approximate U Vᵀ of each matrix in G (..., m, n); returns G's shape, in G's dtype or, with
    keep_dtype, in the dtype the iteration ran in (bf16 on CUDA: half the bytes to gather)."""
    if G.ndim < 2:
        raise ValueError(f"orthogonalization needs matrices (..., m, n), got shape {tuple(G.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if method == "svd":
        return _svd_orthogonalize(G)
    coeffs = coefficients(method, steps)
    if dtype is None:  # bf16 on CUDA; on CPU fp32 (fp64 for fp64 inputs)
        dtype = torch.bfloat16 if G.is_cuda else torch.promote_types(G.dtype, torch.float32)
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    batch_shape, (m, n) = X.shape[:-2], X.shape[-2:]
    X = X.reshape(-1, m, n).to(dtype)
    norm = X.norm(dim=(-2, -1), keepdim=True)
    if method == "polar_express":
        norm = norm * POLAR_EXPRESS_SAFETY
    X = (X / (norm + eps)).contiguous()
    X = iterate(X, coeffs, backend).reshape(*batch_shape, m, n)
    X = X.mT if tall else X
    return X if keep_dtype else X.to(G.dtype)


def _svd_orthogonalize(G: Tensor) -> Tensor:
    """Exact U Vᵀ (the polar factor). Zero singular values map to zero, as in the iterations."""
    work = G.double() if G.dtype == torch.float64 else G.float()
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    keep = (S > S.amax(dim=-1, keepdim=True) * 1e-6 * max(G.shape[-2:])).to(work.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(G.dtype)
