"""Norms with their duality maps: what "steepest" means for each kind of parameter.

Every weight is treated as a linear map W of shape (..., d_out, d_in) (leading dimensions are a
batch of independent matrices, e.g. a merged QKV weight); vectors are (n,). For a norm ‖·‖ each
object gives

    norm(W)          ‖W‖ (the largest over a batch: the batch lies in the ball if each matrix does)
    direction(G)     T* = argmax ⟨G, T⟩ over ‖T‖ <= 1: the unit steepest-ascent direction
    dual_norm(G)     ‖G‖_* = ⟨G, T*⟩ (the sum over a batch)
    init_(W)         fill W in place with a random point on the unit sphere ‖W‖ = 1

and Scion's linear minimization oracle over the ball of radius ρ is lmo(G) = −ρ · direction(G).
Every direction is invariant to positive scaling of G. Embedding tables stored as (vocab, dim)
are maps from one-hot vectors of size vocab: the caller passes them transposed (see optimizers).

    spectral      RMS→RMS operator norm √(d_in/d_out)·σ_max(W);  T* = √(d_out/d_in)·U Vᵀ
    spectral_max  σ_max(W)/max(1, √(d_out/d_in));               T* = max(1, √(d_out/d_in))·U Vᵀ
    sign          ℓ1→ℓ∞ operator norm max|W_ij| ("max-of-max");   T* = sign(G)  (Adam without EMA)
    sign_fanin    d_in·max|W_ij| (Scion's normalized Sign);        T* = sign(G) / d_in
    colnorm       ℓ1→RMS operator norm max_j rms(column j);        T*: each column scaled to RMS 1
    colnorm_normalized  d_in·max_j rms(column j);                  T*: each column scaled to RMS 1/d_in
    rownorm       RMS→ℓ∞ operator norm max_i √d_in·‖row i‖₂;      T*: each row scaled to ‖·‖₂ = 1/√d_in
    rownorm_unnormalized  ℓ2→ℓ∞ operator norm max_i ‖row i‖₂;    T*: each row scaled to ‖·‖₂ = 1
    rms           RMS of a vector ‖w‖₂/√n;                          T* = √n·g/‖g‖₂
    euclidean     Frobenius ‖W‖_F (plain SGD);                      T* = G/‖G‖_F

The reference Scion (LIONS-EPFL/scion, scion.py) names the variants by flags: its ColNorm(normalized=True)
is colnorm_normalized ("use True only for non-input layers": d_in is the width for the head, so colnorm
and colnorm_normalized differ there by a width-dependent factor), ColNorm() is colnorm; RowNorm() (its
default normalized=True) is rownorm, RowNorm(normalized=False) rownorm_unnormalized; Spectral() is
spectral, Spectral(max=True) spectral_max (its "input layer" choice: no shrinking for wide-in maps).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optimizers.orthogonalize import orthogonalize

EPS = 1e-30  # guards divisions for all-zero gradients (their direction is zero)


def _as_matrices(W: Tensor) -> Tensor:
    """(..., d_out, d_in) -> (batch, d_out, d_in); a vector (n,) -> (1, n, 1)."""
    if W.ndim == 0:
        return W.reshape(1, 1, 1)
    if W.ndim == 1:
        return W.reshape(1, -1, 1)
    return W.reshape(-1, *W.shape[-2:])


class Norm:
    name = "norm"
    matrix_only = False  # True: undefined for vectors (raises)
    orthogonalizes = False  # True: direction() takes the orthogonalization's method, steps, backend, dtype

    def _check(self, W: Tensor) -> None:
        if self.matrix_only and W.ndim < 2:
            raise ValueError(f"the {self.name} norm needs matrices (..., d_out, d_in); got shape {tuple(W.shape)}")

    def norm(self, W: Tensor) -> Tensor:
        raise NotImplementedError

    def direction(self, G: Tensor, **kwargs) -> Tensor:
        raise NotImplementedError

    def dual_norm(self, G: Tensor) -> Tensor:
        raise NotImplementedError

    def init_(self, W: Tensor) -> Tensor:
        raise NotImplementedError

    def lmo(self, G: Tensor, radius: float = 1.0, **kwargs) -> Tensor:
        """argmin of ⟨G, X⟩ over the ball ‖X‖ <= radius."""
        return -radius * self.direction(G, **kwargs)

    def __repr__(self) -> str:
        return f"NORMS[{self.name!r}]"


class Spectral(Norm):
    name, matrix_only, orthogonalizes = "spectral", True, True
    at_least_one = False  # spectral_max: the scale max(1, √(d_out / d_in))

    def _scale(self, W: Tensor) -> float:
        scale = math.sqrt(W.size(-2) / W.size(-1))  # √(d_out / d_in)
        return max(1.0, scale) if self.at_least_one else scale

    def norm(self, W):
        self._check(W)
        return torch.linalg.matrix_norm(_as_matrices(W).double(), ord=2).max().to(W.dtype) / self._scale(W)

    def direction(self, G, method: str = "svd", steps: int | None = None, backend: str = "auto", dtype=None):
        """√(d_out/d_in)·U Vᵀ; `method` chooses the orthogonalization (exact SVD by default)."""
        self._check(G)
        return self._scale(G) * orthogonalize(G, method, steps, backend=backend, dtype=dtype)

    def dual_norm(self, G):
        self._check(G)
        return self._scale(G) * torch.linalg.matrix_norm(_as_matrices(G).double(), ord="nuc").sum().to(G.dtype)

    @torch.no_grad()
    def init_(self, W):
        self._check(W)
        for M in _as_matrices(W.data):  # views into W
            M.copy_(torch.nn.init.orthogonal_(torch.empty_like(M, dtype=torch.float64)))
        return W.mul_(self._scale(W))


class SpectralMax(Spectral):
    name, at_least_one = "spectral_max", True


class Sign(Norm):
    name = "sign"

    def norm(self, W):
        return W.abs().max()

    def direction(self, G, **_):
        return torch.sign(G)

    def dual_norm(self, G):
        return G.abs().sum()

    @torch.no_grad()
    def init_(self, W):
        return W.copy_(torch.randint(0, 2, W.shape, device=W.device).to(W.dtype) * 2 - 1)


class SignFanIn(Norm):
    name = "sign_fanin"

    @staticmethod
    def _fan_in(W: Tensor) -> int:
        return W.size(-1) if W.ndim >= 2 else 1

    def norm(self, W):
        return self._fan_in(W) * W.abs().max()

    def direction(self, G, **_):
        return torch.sign(G) / self._fan_in(G)

    def dual_norm(self, G):
        return G.abs().sum() / self._fan_in(G)

    @torch.no_grad()
    def init_(self, W):
        Sign().init_(W)
        return W.div_(self._fan_in(W))


class ColNorm(Norm):
    name, matrix_only = "colnorm", True
    by_fan_in = False  # colnorm_normalized: columns of RMS 1/d_in

    def _target(self, W: Tensor) -> float:
        """The RMS of each column of the direction."""
        return 1.0 / W.size(-1) if self.by_fan_in else 1.0

    def norm(self, W):
        self._check(W)
        return (W.norm(dim=-2) / math.sqrt(W.size(-2))).max() / self._target(W)

    def direction(self, G, **_):
        self._check(G)
        cols = G.norm(dim=-2, keepdim=True)
        return G * (self._target(G) * math.sqrt(G.size(-2)) / (cols + EPS))

    def dual_norm(self, G):
        self._check(G)
        return self._target(G) * math.sqrt(G.size(-2)) * G.norm(dim=-2).sum()

    @torch.no_grad()
    def init_(self, W):
        self._check(W)
        W.normal_()
        return W.mul_(self._target(W) * math.sqrt(W.size(-2)) / W.norm(dim=-2, keepdim=True))


class ColNormNormalized(ColNorm):
    name, by_fan_in = "colnorm_normalized", True


class RowNorm(Norm):
    name, matrix_only = "rownorm", True
    by_fan_in = True  # rows of ‖·‖₂ = 1/√d_in; rownorm_unnormalized: 1

    def _root(self, W: Tensor) -> float:
        return math.sqrt(W.size(-1)) if self.by_fan_in else 1.0

    def norm(self, W):
        self._check(W)
        return (W.norm(dim=-1) * self._root(W)).max()

    def direction(self, G, **_):
        self._check(G)
        rows = G.norm(dim=-1, keepdim=True)
        return G / (self._root(G) * rows + EPS)

    def dual_norm(self, G):
        self._check(G)
        return G.norm(dim=-1).sum() / self._root(G)

    @torch.no_grad()
    def init_(self, W):
        self._check(W)
        W.normal_()
        return W.div_(self._root(W) * W.norm(dim=-1, keepdim=True))


class RowNormUnnormalized(RowNorm):
    name, by_fan_in = "rownorm_unnormalized", False


class RMS(Norm):
    """RMS over each vector (over each matrix of a batch, for matrices)."""

    name = "rms"

    def norm(self, W):
        M = _as_matrices(W).flatten(1)
        return (M.norm(dim=1) / math.sqrt(M.size(1))).max()

    def direction(self, G, **_):
        M = _as_matrices(G).flatten(1)
        return (M * (math.sqrt(M.size(1)) / (M.norm(dim=1, keepdim=True) + EPS))).view_as(G)

    def dual_norm(self, G):
        M = _as_matrices(G).flatten(1)
        return math.sqrt(M.size(1)) * M.norm(dim=1).sum()

    @torch.no_grad()
    def init_(self, W):
        return W.fill_(1.0)


class Euclidean(Norm):
    """Frobenius norm of each matrix (ℓ2 of a vector): steepest descent is plain SGD."""

    name = "euclidean"

    def norm(self, W):
        return _as_matrices(W).flatten(1).norm(dim=1).max()

    def direction(self, G, **_):
        M = _as_matrices(G).flatten(1)
        return (M / (M.norm(dim=1, keepdim=True) + EPS)).view_as(G)

    def dual_norm(self, G):
        return _as_matrices(G).flatten(1).norm(dim=1).sum()

    @torch.no_grad()
    def init_(self, W):
        M = _as_matrices(W.data).flatten(1)
        M.normal_()
        M.div_(M.norm(dim=1, keepdim=True))
        return W


NORMS: dict[str, Norm] = {n.name: n for n in (Spectral(), SpectralMax(), Sign(), SignFanIn(), ColNorm(), ColNormNormalized(),
                                                RowNorm(), RowNormUnnormalized(), RMS(), Euclidean())}
