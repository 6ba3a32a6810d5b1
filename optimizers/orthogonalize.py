"""Approximate orthogonalization: G = U S V^T  ->  U V^T (the "zeroth power" of G).

Muon's quintic Newton-Schulz iteration: after scaling G so that its spectral norm is at most 1
(dividing by the Frobenius norm), repeat

    A = X X^T,   X <- a X + (b A + c A A) X,     (a, b, c) = (3.4445, -4.7750, 2.0315)

which maps every singular value s to p(s) = a s + b s^3 + c s^5 and pushes it towards ~1 (five
steps land roughly in [0.68, 1.13]). Tall matrices are transposed so that A is the smaller Gram
matrix. Works on batches (..., m, n).
"""

import torch
from torch import Tensor

MUON_QUINTIC = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: Tensor, steps: int = 5, dtype: torch.dtype | None = None, eps: float = 1e-7) -> Tensor:
    """Quintic Newton-Schulz on the last two dims of G; returns G's shape, in `dtype`
    (default: bfloat16 on CUDA, float32 elsewhere)."""
    if G.ndim < 2:
        raise ValueError(f"orthogonalization needs a matrix, got shape {tuple(G.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    a, b, c = MUON_QUINTIC
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X
