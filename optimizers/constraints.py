"""Weight-norm constraints: after each optimizer step, bring each matrix of a role back into a norm ball.

`apply_constraint` is the entry point the trainer calls after each optimizer step with the matrices of one
role: it batches them by shape (a merged (3, d, d) QKV weight is three matrices, each constrained on its own),
runs the method and writes the results back into the parameters in place. ConstraintState keeps what persists
between calls (the power iteration's vectors, the hyperball's radii); CONSTRAINTS names the methods, whose
math, with its sources, is in optimizers/constraint_methods.py:

    none, spectral_normalize, spectral_hammer, spectral_soft_cap, spectral_hard_cap, hyperball
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from optimizers.constraint_methods import (
    DTYPES,
    certified_spectral_bound,
    hyperball,
    power_iteration,
    role_beta,
    soft_cap_alpha,
    spectral_hammer,
    spectral_hard_cap,
    spectral_normalize,
    spectral_soft_cap,
    start_vectors,
)
from optimizers.orthogonalize import BACKENDS


@dataclass(frozen=True)
class ConstraintSettings:
    """How the constraints compute (the bound itself, β = max_norm, is an argument of apply_constraint)."""

    power_iters: int = 16  # power iterations the first time a matrix is seen (fixed random start)
    power_iters_warm: int = 2  # ... and on later calls, from the vector stored in ConstraintState
    polish_steps: int = 3  # hard cap: monotone-quintic steps after Polar Express's five, for sign and polar
    # hard cap: leave untouched (bitwise) matrices whose certified bound on σ_max (the Gram matrix squared this
    # many times, certified_spectral_bound) is <= β; 0: never skip. The power iteration's σ̂ cannot decide this:
    # it only approaches σ_max from below, and lags when a step turns the top singular vectors.
    skip_squarings: int = 4
    shape_scaled: bool = False  # bound √(d_in/d_out)·σ_max (RMS→RMS norm) instead of σ_max
    dtype: str = "auto"  # working dtype of the cap iterations: auto | bfloat16 | float32 | float64
    backend: str = "auto"  # the polar / sign iterations: auto (Triton on CUDA) | torch | triton

    def check(self) -> None:
        for key in ("power_iters", "power_iters_warm", "polish_steps", "skip_squarings"):
            if getattr(self, key) < 0 or (key == "power_iters" and self.power_iters < 1):
                raise ValueError(f"constraint.{key} must be >= {1 if key == 'power_iters' else 0}, "
                                 f"got {getattr(self, key)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"constraint.dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"constraint.backend {self.backend!r} is not one of {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------------------------------------------
# State, registry, entry point
# ---------------------------------------------------------------------------------------------------------------------


def _key(w: Tensor) -> tuple:
    """A weight's identity across calls: its memory and shape, the same for a parameter, its .data and
    .detach() (a Python id would differ between them) and stable under in-place optimizer updates."""
    return w.data_ptr(), tuple(w.shape)


class ConstraintState:
    """What persists between calls, per weight (keyed by its memory and shape): `vectors[key]` the power
    iteration's right vectors (..., d_in), `radii[key]` the hyperball's initial Frobenius norms (...,).
    One state per list of parameters (per role, per rank) is the natural use."""

    def __init__(self) -> None:
        self.vectors: dict[tuple, Tensor] = {}
        self.radii: dict[tuple, Tensor] = {}

    def state_dict(self, weights: list[Tensor]) -> dict:
        """By position in `weights`, for checkpoints."""
        keys = [_key(w) for w in weights]
        return {"vectors": {i: self.vectors[k] for i, k in enumerate(keys) if k in self.vectors},
                "radii": {i: self.radii[k] for i, k in enumerate(keys) if k in self.radii}}

    def load_state_dict(self, weights: list[Tensor], state: dict) -> None:
        for name in ("vectors", "radii"):
            getattr(self, name).update({_key(weights[i]): t.to(weights[i].device) for i, t in state[name].items()})


@dataclass
class Batch:
    """One shape group on its way through a method: W (B, m, n) copied out of the parameters, the power
    vectors v (B, n) (updated by the method), whether they were just started, the hyperball radii, and
    max_update / max_norm (the soft cap's k − 1; a ratio, so the same with or without shape scaling)."""

    W: Tensor
    v: Tensor
    fresh: bool
    radius: Tensor | None
    update_ratio: float | None


def _top(b: Batch, s: ConstraintSettings) -> tuple[Tensor, Tensor]:
    """Run the power iteration on the batch (cold or warm), store its vectors; return σ̂ and û."""
    sigma, u, b.v = power_iteration(b.W, b.v, s.power_iters if b.fresh else s.power_iters_warm)
    return sigma, u


def _run_normalize(b: Batch, beta: float, s: ConstraintSettings) -> Tensor:
    return spectral_normalize(b.W, beta, _top(b, s)[0])


def _run_hammer(b: Batch, beta: float, s: ConstraintSettings) -> Tensor:
    sigma, u = _top(b, s)
    return spectral_hammer(b.W, beta, sigma, u, b.v)


def _run_soft_cap(b: Batch, beta: float, s: ConstraintSettings) -> Tensor:
    """α from max_update (Newhouse et al.'s coupling); a matrix above the k·β the coupling assumes (e.g. one
    that starts outside the ball) is first normalized down to k·β, since f is not monotone beyond it."""
    if b.update_ratio is None or not b.update_ratio >= 0:
        raise ValueError("constraint.method = 'spectral_soft_cap' needs max_update >= 0: the largest spectral norm "
                         "one optimizer step adds to a matrix (e.g. lr x shape scale)")
    k = 1.0 + b.update_ratio
    W = spectral_normalize(b.W, k * beta, _top(b, s)[0])
    return spectral_soft_cap(W, beta, soft_cap_alpha(k), dtype=s.dtype)


def _run_hard_cap(b: Batch, beta: float, s: ConstraintSettings) -> Tensor:
    """Matrices certified inside the ball (certified_spectral_bound <= β) keep their bits (no rounding noise of the
    iteration); the others are capped."""
    capped = spectral_hard_cap(b.W, beta, polish_steps=s.polish_steps, dtype=s.dtype, backend=s.backend)
    if s.skip_squarings <= 0:
        return capped
    inside = certified_spectral_bound(b.W, s.skip_squarings) <= beta
    return torch.where(inside[:, None, None], b.W, capped)


def _run_hyperball(b: Batch, beta: float, s: ConstraintSettings) -> Tensor:
    return hyperball(b.W, b.radius)


@dataclass(frozen=True)
class Constraint:
    name: str
    run: Callable[[Batch, float, ConstraintSettings], Tensor] | None  # None: "none"
    about: str
    power_iteration: bool = False  # keeps power-iteration vectors in the state
    radius: bool = False  # keeps the initial Frobenius norms in the state


CONSTRAINTS: dict[str, Constraint] = {c.name: c for c in (
    Constraint("none", None, "no constraint (weight decay, if any, is the optimizer's)"),
    Constraint("spectral_normalize", _run_normalize, "W / max(1, σ̂/β), σ̂ by power iteration", power_iteration=True),
    Constraint("spectral_hammer", _run_hammer, "top singular value set to β (power iteration)", power_iteration=True),
    Constraint("spectral_soft_cap", _run_soft_cap, "odd polynomial σ -> g + αg³, g = σ − ασ³ (Newhouse et al.)",
               power_iteration=True),
    Constraint("spectral_hard_cap", _run_hard_cap, "σ -> min(σ, β) through sign and polar iterations"),
    Constraint("hyperball", _run_hyperball, "W · ‖W₀‖_F / ‖W‖_F (MuonH / NorMuonH)", radius=True),
)}


def get_constraint(method: str) -> Constraint:
    if method not in CONSTRAINTS:
        raise ValueError(f"constraint.method {method!r} is not one of {', '.join(map(repr, CONSTRAINTS))}")
    return CONSTRAINTS[method]


def _groups(weights: list[Tensor]) -> dict[tuple, list[Tensor]]:
    """Weights with the same matrix shape, dtype and device, in order."""
    groups: dict[tuple, list[Tensor]] = {}
    for w in weights:
        if w.ndim < 2:
            raise ValueError(f"weight constraints need matrices (..., d_out, d_in), got shape {tuple(w.shape)}")
        groups.setdefault((tuple(w.shape[-2:]), w.dtype, w.device), []).append(w)
    return groups


def _gather_state(c: Constraint, ws: list[Tensor], W: Tensor, state: ConstraintState) -> tuple[Tensor, bool, Tensor]:
    """The group's power vectors (B, n) (fresh ones for weights seen the first time) and hyperball radii (B,)."""
    fresh = False
    for w in ws:
        if c.power_iteration and _key(w) not in state.vectors:
            state.vectors[_key(w)], fresh = start_vectors(w), True
        if c.radius and _key(w) not in state.radii:
            r = w.detach().double().norm(dim=(-2, -1))
            if not bool((r > 0).all()):
                raise ValueError("constraint.method = 'hyperball' keeps each matrix at its initial Frobenius norm, "
                                 "so it needs nonzero initial matrices (zero-initialized projections cannot move)")
            state.radii[_key(w)] = r.to(torch.promote_types(w.dtype, torch.float32))
    v = torch.cat([state.vectors[_key(w)].reshape(-1, W.size(-1)) for w in ws]) if c.power_iteration else None
    r = torch.cat([state.radii[_key(w)].reshape(-1) for w in ws]) if c.radius else None
    return v, fresh, r


@torch.no_grad()
def apply_constraint(method: str, weights: list[Tensor], max_norm: float, state: ConstraintState, *,
                     max_update: float | None = None, settings: ConstraintSettings = ConstraintSettings()) -> None:
    """Constrain `weights` (the matrices of one role) in place, after an optimizer step.

    Same-shape matrices are stacked into one batch (B, d_out, d_in) per shape (leading dims of a weight, such
    as the merged QKV's 3, are matrices of the batch), the method runs on each batch, and the results are
    copied back. max_norm: β (unused by "none" and "hyperball"); max_update: the spectral norm one optimizer
    step can add, needed by the soft cap (same units as max_norm)."""
    c = get_constraint(method)
    settings.check()
    if c.run is None:
        return
    if c.name != "hyperball" and not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"constraint.max_norm must be a positive finite number, got {max_norm}")
    for ((m, n), _, _), ws in _groups(weights).items():
        W = torch.cat([w.detach().reshape(-1, m, n) for w in ws])
        v, fresh, radius = _gather_state(c, ws, W, state)
        beta = role_beta(max_norm, m, n, settings.shape_scaled)
        batch = Batch(W, v, fresh, radius, None if max_update is None else max_update / max_norm)
        new = c.run(batch, beta, settings)
        start = 0
        for w in ws:
            k = w.numel() // (m * n)
            w.detach().copy_(new[start:start + k].reshape(w.shape))
            if c.power_iteration:
                state.vectors[_key(w)] = batch.v[start:start + k].reshape(*w.shape[:-2], n)
            start += k
