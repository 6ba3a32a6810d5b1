"""The weight-norm constraints' math: each method brings a batch of matrices back into a norm ball.

Every method acts on a batch of same-shape matrices W (..., d_out, d_in) (a merged (3, d, d) QKV weight is
three matrices, each constrained on its own) and returns the new weights without touching its input.
optimizers/constraints.py holds what persists between calls (power vectors, radii), the registry of methods
and `apply_constraint`, the entry point the trainer calls after each optimizer step.
β = max_norm is a bound on the spectral norm σ_max (with ConstraintSettings.shape_scaled, on the RMS→RMS
operator norm √(d_in/d_out)·σ_max, i.e. σ_max <= β·√(d_out/d_in), the scaling of optimizers/norms.py's
"spectral").
Weight decay, the baseline, stays in the optimizers.

    none                W <- W
    spectral_normalize  W <- W / max(1, σ̂/β)                       (a no-op, bitwise, when σ̂ <= β)
    spectral_hammer     W <- W + (β − σ̂)·û v̂ᵀ: the top singular value set to β (raised to β when below,
                        as in the paper's code), the others untouched
    spectral_soft_cap   each s = σ/β <- f(s) = g + α·g³ with g = s − α·s³: two odd cubic steps that take
                        s = k to exactly 1 and leave small s nearly unchanged (f(s) = s − 3α²s⁵ + ...);
                        a matrix above k·β is first normalized to k·β (ours: f is not monotone beyond k)
    spectral_hard_cap   W = U S Vᵀ  ->  U min(S, β) Vᵀ   (a no-op, bitwise, when a certified upper bound on σ_max,
                        `certified_spectral_bound`, is <= β: never when only an estimate says so)
    hyperball           W <- W · r₀ / ‖W‖_F, r₀ = ‖W‖_F the first time the matrix is seen

σ̂, û, v̂ come from power iteration (`power_iteration`), whose right vectors persist between calls in
ConstraintState: the first call on a matrix runs settings.power_iters iterations from a fixed random
start, later calls settings.power_iters_warm from the stored vector (the weights move little per step).
Power iteration is matrix-vector work, bound by memory traffic, so it runs in float32 (float64 for
float64 weights) whatever the working dtype; σ̂ <= σ_max always (it converges from below).

Sources (facts and coefficients; the code is ours):
  - Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training Transformers with Enforced Lipschitz
    Constants" (arXiv 2507.13338, 2025), and Newhouse's thesis "Duality, Weight Decay, and Metrized Deep
    Learning" (MIT, 2025): spectral normalization W / max(1, σ̂/β) (after Miyato et al., 2018, who divide
    by σ̂ always) and the spectral hammer, both with power iteration; the spectral
    soft cap with coefficients (a, b) = (1, −α) then (1, +α) on p(X) = a·X + b·X XᵀX, co-designed with Muon:
    α is the smallest positive root of f(k) = 1, where k = 1 + (spectral norm of one update)/β bounds σ/β
    after an optimizer step from inside the ball. Expanding, f(k) = k − 3α²k⁵ + 3α³k⁷ − α⁴k⁹, the quartic
    in α their `soft_cap_coupling` solves (the paper's code, modula/atom.py of
    github.com/Arongil/lipschitz-transformers, as read in the phess2/lipschitz-transformers fork).
  - Spectral hard cap: min(σ, β) = (σ + β − |σ − β|)/2 with |·| through the matrix sign / polar factor
    (F. Cesista, "Numerically stable spectral clipping via Newton–Schulz iteration", leloykun.github.io,
    2025; J. Su, "Computing singular value clipping mclip via msign", kexue.fm 11006 and 11059, 2025).
    We use the equivalent split min(σ, β) = σ − (σ − β)·[σ > β] with the step [σ > β] = (1 + sign(σ² − β²))/2
    taken from the sign of the small Gram matrix: see `spectral_hard_cap` for why.
  - Hyperball: the projection of MuonH / NorMuonH (KellerJordan/modded-nanogpt,
    records/track_3_optimization/results/20260430_muonh and 20260430_normuonh): after each step the hidden
    matrix is rescaled to the Frobenius norm it had at initialization, W <- W·‖W₀‖_F/‖W‖_F.

Working dtype of the polynomial / polar iterations (soft and hard cap): settings.dtype, "auto" = bfloat16 on
CUDA like optimizers/orthogonalize.py, float32 elsewhere (float64 for float64 weights). Both caps compute
the *change* of the weights in that dtype and add it to the weights in their own dtype, so bfloat16 rounds
the (small) change, not the weights themselves.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optimizers.orthogonalize import POLAR_EXPRESS_SAFETY, coefficients, iterate

DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
SOFT_CAP_MAX_K = 81 / 62  # f is increasing on [0, k] only while α·k² <= 1/3, i.e. k <= 81/62 (see soft_cap_alpha)
_TINY = 1e-30  # guards divisions for all-zero matrices and vectors
_SEED = 20250717  # fixed start of the power iteration: the same on every rank and every run


def _batch(W: Tensor) -> Tensor:
    """(..., m, n) -> (B, m, n)."""
    if W.ndim < 2:
        raise ValueError(f"weight constraints need matrices (..., d_out, d_in), got shape {tuple(W.shape)}")
    return W.reshape(-1, *W.shape[-2:])


def _work_dtype(W: Tensor, dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    chosen = DTYPES[dtype or "auto"]
    if chosen is not None:
        return chosen
    return torch.bfloat16 if W.is_cuda else torch.promote_types(W.dtype, torch.float32)


def _unit(x: Tensor, fallback: Tensor) -> tuple[Tensor, Tensor]:
    """x / ‖x‖ along the last dim, and ‖x‖; where ‖x‖ = 0 (a zero matrix) keep `fallback`."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(_TINY), fallback), norm.squeeze(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Power iteration, normalization, hammer
# ---------------------------------------------------------------------------------------------------------------------


def start_vectors(W: Tensor) -> Tensor:
    """A fixed random unit vector per matrix of W (..., m, n): (..., n), float32 (float64 for float64 W)."""
    gen = torch.Generator().manual_seed(_SEED)
    dtype = torch.promote_types(W.dtype, torch.float32)
    v = torch.randn(*W.shape[:-2], W.size(-1), generator=gen, dtype=torch.float64).to(W.device, dtype)
    return v / v.norm(dim=-1, keepdim=True)


def power_iteration(W: Tensor, v: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """σ̂, û, v̂ of each matrix of W (..., m, n) from `iters` steps u <- W v/‖W v‖, v <- Wᵀu/‖Wᵀu‖ started
    at v (..., n); returns σ̂ = ‖W v̂‖ (...,), û = W v̂/σ̂ (..., m) and v̂ (..., n), in float32 (float64 for
    float64 W). σ̂ <= σ_max; a zero matrix gives σ̂ = 0 and keeps its vectors."""
    dtype = torch.promote_types(W.dtype, torch.float32)
    M = _batch(W).to(dtype)
    v = v.reshape(M.size(0), M.size(2)).to(dtype)
    u = torch.zeros(M.size(0), M.size(1), dtype=dtype, device=M.device)
    # products as row vectors, vᵀWᵀ and uᵀW: 3-4x faster than W v and Wᵀu with torch 2.13 on CPU
    for _ in range(iters):
        u, _ = _unit(torch.bmm(v.unsqueeze(1), M.mT).squeeze(1), u)
        v, _ = _unit(torch.bmm(u.unsqueeze(1), M).squeeze(1), v)
    u, sigma = _unit(torch.bmm(v.unsqueeze(1), M.mT).squeeze(1), u)
    lead = W.shape[:-2]
    return sigma.reshape(lead), u.reshape(*lead, M.size(1)), v.reshape(*lead, M.size(2))


def role_beta(max_norm: float, m: int, n: int, shape_scaled: bool) -> float:
    """The bound on σ_max of an (m, n) matrix: max_norm, or with shape_scaled the σ_max whose RMS→RMS norm
    √(n/m)·σ_max is max_norm."""
    return max_norm * (math.sqrt(m / n) if shape_scaled else 1.0)


def spectral_normalize(W: Tensor, beta: float, sigma: Tensor) -> Tensor:
    """W / max(1, σ/β) for each matrix of W (..., m, n), with σ (...,) its spectral norm (σ̂ of the power
    iteration). Returns new weights in W's dtype; a matrix with σ <= β is returned bitwise unchanged."""
    factor = (sigma / beta).clamp_min(1.0).reciprocal()  # exactly 1.0 inside the ball
    return W * factor.to(W.dtype)[..., None, None]


def spectral_hammer(W: Tensor, beta: float, sigma: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """W + (β − σ)·u vᵀ for each matrix of W (..., m, n), with σ, u (..., m), v (..., n) its top singular
    triple (from the power iteration): the top singular value becomes β (also when it was below β), the
    others are untouched. Returns new weights in W's dtype."""
    change = (beta - sigma).to(u.dtype)[..., None, None] * (u.unsqueeze(-1) * v.unsqueeze(-2))
    return W + change.to(W.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Soft cap (Newhouse et al.) and hard cap
# ---------------------------------------------------------------------------------------------------------------------


def soft_cap_alpha(k: float) -> float:
    """The soft cap's strength α for singular values bounded by k·β: the smallest α >= 0 with f(k) = 1
    in units of β, f(s) = g + α·g³, g = s − α·s³. With t = α·k², f(k) = k·h(t), h(t) = 1 − 3t² + 3t³ − t⁴,
    which falls from 1 at t = 0 to 0 at t = 1; we solve h(t) = 1/k by bisection. f is increasing on
    [0, k] (so every σ <= k·β lands at or below β) only while t <= 1/3, i.e. for k <= 81/62."""
    if not math.isfinite(k) or k <= 1.0:
        return 0.0
    if k > SOFT_CAP_MAX_K:
        raise ValueError(f"the spectral soft cap can bring singular values of up to {SOFT_CAP_MAX_K:.4f}·max_norm "
                         f"down to max_norm, not {k:.4f}·max_norm: max_update / max_norm must be <= "
                         f"{SOFT_CAP_MAX_K - 1:.4f} (lower the learning rate or raise constraint.max_norm)")
    lo, hi = 0.0, 1.0 / 3.0
    for _ in range(80):
        t = 0.5 * (lo + hi)
        lo, hi = (t, hi) if 1 - 3 * t**2 + 3 * t**3 - t**4 > 1.0 / k else (lo, t)
    return 0.5 * (lo + hi) / k**2


def spectral_soft_cap(W: Tensor, beta: float, alpha: float, *, dtype: str | torch.dtype | None = None) -> Tensor:
    """Newhouse et al.'s soft cap on each matrix of W (..., m, n), in units of β (X = W/β):

        Y = X − α·X XᵀX,   X' = Y + α·Y YᵀY,   i.e. each σ -> f(σ) = g + α g³, g = σ − α σ³,

    an odd polynomial of degree 9: f(s) = s − 3α²s⁵ + 3α³s⁷ − α⁴s⁹, so small singular values move by
    about 3α²s⁵ while σ = k maps to 1 for α = soft_cap_alpha(k). The change X' − X = α(Y YᵀY − X XᵀX) is
    computed in the working dtype and added to W in its own. Returns new weights."""
    M = _batch(W)
    tall = M.size(-2) > M.size(-1)  # work with the smaller Gram matrix
    X = (M.mT if tall else M).to(_work_dtype(W, dtype)) / beta
    AX = (X @ X.mT) @ X
    Y = X - alpha * AX
    change = alpha * ((Y @ Y.mT) @ Y - AX)
    change = change.mT if tall else change
    return W + (beta * change).to(W.dtype).reshape(W.shape)


def sign_coefficients(polish_steps: int) -> list[tuple[float, float, float]]:
    """Polar Express's five steps, then `polish_steps` of the monotone quintic p(s) = (15s − 10s³ + 3s⁵)/8, which
    fixes 1 with p' = p'' = 0 there and is increasing on [0, 1], so it never takes a singular value above 1
    (the polar factor's singular values are what the hard cap leaves of those above β): p(1 − e) ≈ 1 − 2.5e³.
    (The modular quintic (2, −1.5, 0.5) that was used before has p''(1) = 1 and overshoots to 1.00176, so the
    cap could leave σ_max up to 0.18% above β.) Inputs >= 1e-3 (relative to the bound) leave PE within about
    ±0.25 of 1 (values above 1 are brought back down, values below come up from below)."""
    polish = coefficients("monotone_quintic", polish_steps) if polish_steps else []
    return coefficients("polar_express") + polish


def certified_spectral_bound(W: Tensor, squarings: int) -> Tensor:
    """An upper bound on σ_max of each matrix of W (..., m, n) that cannot fall below it (unlike the power
    iteration's σ̂): with A = X Xᵀ (the smaller Gram matrix, eigenvalues σᵢ²), λ_max(A)^(2^k) = λ_max(A^(2^k))
    <= ‖A^(2^k)‖_F, so σ_max <= ‖A^(2^k)‖_F^(1/2^(k+1)), within a factor rank^(1/2^(k+1)) of it (k = squarings:
    4 gives at most 768^(1/32) = 1.23 for a flat 768-wide spectrum, far less when the top stands out). In
    float64, each power renormalized (nothing overflows), plus a relative 1e-9 for rounding. Returns (...,)."""
    M = _batch(W).double()
    X = M.mT if M.size(-2) > M.size(-1) else M
    A = X @ X.mT
    scale = A.norm(dim=(-2, -1)).clamp_min(_TINY)
    B = A / scale[:, None, None]
    log_norm = torch.zeros_like(scale)  # log ‖(A / scale)^(2^j)‖_F
    for _ in range(squarings):
        B = B @ B
        n = B.norm(dim=(-2, -1)).clamp_min(_TINY)
        log_norm = 2 * log_norm + n.log()
        B = B / n[:, None, None]
    lam = scale * torch.exp(log_norm / 2**squarings)
    return (lam.sqrt() * (1 + 1e-9)).reshape(W.shape[:-2]).to(torch.promote_types(W.dtype, torch.float32))


def _spectral_bound(A: Tensor) -> Tensor:
    """An upper bound on the spectral norm of X from its Gram matrix A = X Xᵀ: ‖A‖_F^½ = (Σσ⁴)^¼ >= σ_max,
    within (rank)^¼ of it (the Frobenius norm is within (rank)^½)."""
    return A.norm(dim=(-2, -1), keepdim=True).sqrt().clamp_min(_TINY) * POLAR_EXPRESS_SAFETY


def spectral_hard_cap(W: Tensor, beta: float, *, polish_steps: int = 3, dtype: str | torch.dtype | None = None,
                      backend: str = "auto") -> Tensor:
    """σ -> min(σ, β) for each matrix of W (..., m, n). In units of β (X = W/β, X Xᵀ the smaller Gram):

        X = U Σ Vᵀ,   O = polar(X) ≈ U Vᵀ,   S = sign(X Xᵀ − I) ≈ U sign(Σ² − I) Uᵀ,
        X' = X − ½(I + S)(X − O)

    so σ -> σ − (σ − 1)·[σ > 1] = min(σ, 1). O and S come from the polynomial iteration of
    optimizers/orthogonalize.py (Polar Express, then `polish_steps` modular-quintic steps), each input
    divided by a Gram-based bound on its spectral norm (tighter than the Frobenius norm, so singular values
    close to β are resolved better). Why not (σ + β − |σ − β|)/2 with |X − O| = (X − O)·polar(X − O)ᵀ·O
    directly: there, where the polar iteration leaves O's singular value at p ≠ 1 (tiny σ it has not yet
    brought to 1), σ moves by ½(1 − p)(p − σ), up to β/8 at p = ½; here the step [σ > 1] is 0 for σ well
    below 1 whatever O is. Where σ is too close to 1 for the sign to resolve, σ' lies between σ and 1.
    Returns new weights (W minus the change, computed in the working dtype, added in W's dtype)."""
    M = _batch(W)
    tall = M.size(-2) > M.size(-1)
    X = (M.mT if tall else M).to(_work_dtype(W, dtype)) / beta
    coeffs = sign_coefficients(polish_steps)
    A = X @ X.mT
    O = iterate((X / _spectral_bound(A)).contiguous(), coeffs, backend)
    G = A - torch.eye(A.size(-1), dtype=A.dtype, device=A.device)
    S = iterate((G / _spectral_bound(G @ G)).contiguous(), coeffs, backend)  # G symmetric: polar = sign
    excess = X - O
    change = 0.5 * (excess + S @ excess)
    change = change.mT if tall else change
    return W - (beta * change).to(W.dtype).reshape(W.shape)


def hyperball(W: Tensor, radius: Tensor) -> Tensor:
    """W · r / ‖W‖_F for each matrix of W (..., m, n), r (...,) its radius (the initial Frobenius norm):
    the projection onto the sphere of MuonH / NorMuonH. Returns new weights in W's dtype."""
    norm = W.float().norm(dim=(-2, -1)) if W.dtype != torch.float64 else W.norm(dim=(-2, -1))
    return W * (radius.to(norm.dtype) / norm.clamp_min(_TINY)).to(W.dtype)[..., None, None]
