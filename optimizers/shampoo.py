"""Shampoo (Gupta, Koren & Singer, 2018) for hidden matrices, with Muon's auxiliary AdamW for the rest.

For each hidden matrix W (d_out × d_in; leading dimensions are a batch of matrices) with gradient G,
at step t (counted from 1), a param group with algorithm "shampoo" does

    M <- β1·M + (1 − β1)·G,            M̂ = M / (1 − β1ᵗ)                  momentum (bias-corrected)
    L <- β2·L + (1 − β2)·G Gᵀ,         R <- β2·R + (1 − β2)·Gᵀ G           Kronecker factors (β2 = 0: none)
    when f divides t:   Lᵖ = (L / (1 − β2ᵗ) + ε·I)^p,   Rᵖ = (R / (1 − β2ᵗ) + ε·I)^p       (p = −1/4)
    P = Lᵖ M̂ Rᵖ           one-sided: Lᵖ M̂ if d_out <= d_in, else M̂ Rᵖ   (p = −1/2 there)
    Adam grafting:  V <- β·V + (1 − β)·G²,   A = M̂ / (√(V / (1 − βᵗ)) + ε_A),   P <- (‖A‖_F / ‖P‖_F)·P
    W <- (1 − lr·λ)·W − lr·P                                                  decoupled weight decay λ

Until the first inverse roots (step f) P is the grafted step A (M̂ without grafting), as in
Distributed Shampoo, which takes Adam steps before it starts preconditioning. The roots come from an
eigendecomposition in float32 (float64 for float64 weights), eigenvalues clamped at 0 (rounding
makes them slightly negative) before ε is added; root_method = "newton" uses the coupled Newton
iteration instead (matmuls only, for a GPU; p = −1/k for an integer k).

Without averages (β1 = β2 = 0), f = 1, p = −1/4 and no grafting, Shampoo is spectral descent
(Bernstein & Newhouse, 2024): with G = U S Vᵀ, L = U S² Uᵀ and R = V S² Vᵀ give
Lᵖ G Rᵖ = U S^(−1/2) S S^(−1/2) Vᵀ = U Vᵀ, Muon's direction with momentum 0 and exact
orthogonalization (one-sided p = −1/2 gives the same).

The hidden matrices are sharded across ranks as Muon's are (distributed/sharding.py): the owner of a
matrix keeps its momentum, factors and roots, and checkpoints gather them (`sharded_state`).
Other roles: Muon's auxiliary AdamW, or Prodigy (role norm "prodigy", optimizers/prodigy.py).

Config: `[optim] name = "shampoo"`, settings in `[optim.shampoo]` (ShampooConfig).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optimizers.auxiliary import AUXILIARY, auxiliary_metrics, auxiliary_step, decayed_step, role_groups
from optimizers.muon import MuonConfig
from optimizers.prodigy import PRODIGY
from optimizers.shardable import ShardableOptimizer
from optimizers.spec import (
    ADAMW,
    OptimizerSettings,
    OptimizerSpec,
    OptionError,
    Role,
    check_choice,
    check_positive,
    check_range,
    group_defaults,
)

LR = 0.0015  # optim.lr: the hidden matrices' learning rate (track-3 result #21)
GRAFTS = ("adam", "none")
ROOT_METHODS = ("eigh", "newton")
NEWTON_MAX_STEPS = 100
NEWTON_RIDGE = 1e-6  # newton adds this × ‖A‖_F to ε: the iteration diverges on (rounding-)negative eigenvalues


@dataclass(frozen=True)
class ShampooConfig(OptimizerSettings):
    """[optim.shampoo]. Hidden matrices: modded-nanogpt track-3 result #21 (Shampoo, 4,100 steps to 3.28:
    lr 0.0015, weight decay 0.2, betas (0.9, 0.95), precondition frequency 5, power −1/4, Adam grafting
    with β 0.95 and ε 1e-10), with Distributed Shampoo's defaults where #21 kept them (ε 1e-12, bias
    correction). Other roles: Muon's auxiliary AdamW with Muon's defaults (#21's AdamW also used betas
    (0.8, 0.95) and ε 1e-10; its learning rates belong to its own model)."""

    momentum: float = 0.9  # β1, EMA of the gradient (#21 betas[0])
    factor_beta: float = 0.95  # β2, EMA of the Kronecker factors (#21 betas[1]); 0 = no averaging
    power: float = -0.25  # exponent of each factor's root (#21); -0.5 is the one-sided choice
    one_sided: bool = False  # precondition only the smaller side of each matrix
    precondition_frequency: int = 5  # f: inverse roots recomputed every f steps (#21)
    epsilon: float = 1e-12  # ε added to the factors' eigenvalues (Distributed Shampoo's default)
    bias_correction: bool = True  # of the momentum and the factors (Distributed Shampoo's default)
    graft: str = "adam"  # adam: the step has Adam's per-matrix norm (#21) | none
    graft_beta2: float = 0.95  # the grafted Adam's β2 (#21)
    graft_eps: float = 1e-10  # the grafted Adam's ε (#21)
    root_method: str = "eigh"  # eigh (float32 eigendecomposition) | newton (matmul-only iteration)
    adam_betas: tuple[float, float] = MuonConfig.adam_betas  # the auxiliary AdamW's, as Muon's
    adam_eps: float = MuonConfig.adam_eps  # ... and ε
    embed: Role = MuonConfig.embed
    hidden: Role = Role("spectral", weight_decay=0.2)  # #21's weight decay
    head: Role = MuonConfig.head
    scalar: Role = MuonConfig.scalar

    role_norms = {"embed": (ADAMW, PRODIGY), "hidden": ("spectral",), "head": (ADAMW, PRODIGY),
                  "scalar": (ADAMW, PRODIGY)}
    role_rule = ("is not how Shampoo trains this role: hidden matrices with Shampoo (spectral descent without "
                 "its averages), the other roles with AdamW or Prodigy")

    def check(self) -> None:
        super().check()
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_range("factor_beta", self.factor_beta, 0.0, 1.0)
        if not -1.0 <= self.power < 0.0:
            raise OptionError("power", f"must be in [-1, 0) (an inverse root such as -0.25), got {self.power}")
        if self.precondition_frequency < 1:
            raise OptionError("precondition_frequency", f"must be >= 1, got {self.precondition_frequency}")
        check_positive("epsilon", self.epsilon)  # 0 would make the root of a singular factor infinite
        check_choice("graft", self.graft, GRAFTS)
        check_range("graft_beta2", self.graft_beta2, 0.0, 1.0)
        check_positive("graft_eps", self.graft_eps)
        check_choice("root_method", self.root_method, ROOT_METHODS)
        if self.root_method == "newton" and newton_root(self.power) is None:
            raise OptionError("root_method", f"'newton' computes powers -1/k for integers k; power {self.power} "
                                              f"is not one (use root_method = 'eigh')")
        for i, beta in enumerate(self.adam_betas):
            check_range(f"adam_betas[{i}]", beta, 0.0, 1.0)
        check_positive("adam_eps", self.adam_eps)


# ----------------------------------------------------------------------------------------------
# Inverse roots of symmetric positive semi-definite matrices


def newton_root(power: float) -> int | None:
    """k when power = −1/k for an integer k >= 1, else None."""
    k = round(-1.0 / power)
    return k if k >= 1 and abs(power + 1.0 / k) < 1e-12 else None


def inverse_root(A: Tensor, power: float, eps: float, method: str = "eigh") -> Tensor:
    """(A + ε·I)^power of each symmetric PSD matrix of A (..., n, n), power < 0, in float32 (float64
    stays float64). eigh: eigenvalues clamped at 0 before ε is added. newton: the coupled Newton
    iteration, with a ridge of NEWTON_RIDGE·‖A‖_F added to ε."""
    work = A.to(torch.promote_types(A.dtype, torch.float32))
    if method == "eigh":
        values, vectors = torch.linalg.eigh(work)
        values = (values.clamp(min=0) + eps).pow(power)
        return (vectors * values.unsqueeze(-2)) @ vectors.mT
    if method == "newton":
        k = newton_root(power)
        if k is None:
            raise ValueError(f"the Newton iteration computes powers -1/k for integers k, got {power}")
        return _newton_inverse_root(work, k, eps)
    raise ValueError(f"unknown root method {method!r}; choose from {', '.join(ROOT_METHODS)}")


def _newton_inverse_root(A: Tensor, k: int, eps: float) -> Tensor:
    """A^(−1/k) by the coupled iteration (Guo & Higham, 2006): X₀ = z^(1/k)·I, M₀ = z·A with
    z = (1 + k) / (2‖A‖_F) (eigenvalues of M₀ in (0, (1 + k)/2]), then T = ((k + 1)·I − M) / k,
    X <- X·T, M <- Tᵏ·M, keeping M = Xᵏ·A, until M ≈ I (so X ≈ A^(−1/k))."""
    eye = torch.eye(A.size(-1), dtype=A.dtype, device=A.device)
    norm = A.norm(dim=(-2, -1), keepdim=True)
    A = A + (eps + NEWTON_RIDGE * norm) * eye
    z = (1 + k) / (2 * A.norm(dim=(-2, -1), keepdim=True))
    X, M = eye * z ** (1 / k), A * z
    tol = 1e-10 if A.dtype == torch.float64 else 1e-5
    for _ in range(NEWTON_MAX_STEPS):
        T = ((k + 1) * eye - M) / k
        X, M = X @ T, torch.linalg.matrix_power(T, k) @ M
        if (M - eye).abs().amax() < tol:
            break
    return X


# ----------------------------------------------------------------------------------------------
# The update rule


def preconditioned_sides(shape, one_sided: bool) -> tuple[str, ...]:
    """("left", "right"), or the smaller side alone: left (d_out × d_out) when d_out <= d_in."""
    if not one_sided:
        return ("left", "right")
    return ("left",) if shape[-2] <= shape[-1] else ("right",)


def shampoo_update(G: Tensor, state: dict, t: int, group: dict) -> Tensor:
    """The step P of one matrix at step t (state updated in place; the equations of the module
    docstring): momentum, factors, inverse roots every f steps, preconditioning, grafting."""
    beta1, beta2, f = group["momentum"], group["factor_beta"], group["precondition_frequency"]
    corrected = group["bias_correction"]
    m_hat = state["momentum_buffer"].lerp_(G, 1 - beta1) / ((1 - beta1**t) if corrected else 1.0)
    sides = preconditioned_sides(G.shape, group["one_sided"])
    g = G.to(state[sides[0]].dtype)
    for side in sides:
        state[side].lerp_(g @ g.mT if side == "left" else g.mT @ g, 1 - beta2)
        if t % f == 0:
            factor = state[side] / ((1 - beta2**t) if corrected else 1.0)
            state[f"{side}_root"] = inverse_root(factor, group["power"], group["epsilon"], group["root_method"])
    graft = adam_graft(G, m_hat, state, t, group) if group["graft"] == "adam" else None
    if t < f:
        return m_hat if graft is None else graft
    P = m_hat.to(g.dtype)
    if "left" in sides:
        P = state["left_root"] @ P
    if "right" in sides:
        P = P @ state["right_root"]
    if graft is not None:
        P = P * (graft.norm(dim=(-2, -1), keepdim=True) / (P.norm(dim=(-2, -1), keepdim=True) + 1e-16))
    return P.to(G.dtype)


def adam_graft(G: Tensor, m_hat: Tensor, state: dict, t: int, group: dict) -> Tensor:
    """Adam's step for the same momentum: A = M̂ / (√(V / (1 − βᵗ)) + ε_A), V <- β·V + (1 − β)·G²."""
    beta = group["graft_beta2"]
    v = state["graft_sq"].lerp_(G.square(), 1 - beta)
    return m_hat / ((v / (1 - beta**t)).sqrt_().add_(group["graft_eps"]))


# ----------------------------------------------------------------------------------------------
# The optimizer


class Shampoo(ShardableOptimizer):
    """Shampoo for groups with algorithm="shampoo" (the default), AdamW for algorithm="adamw" and
    Prodigy for algorithm="prodigy" (with that group's Prodigy settings).

    Args: lr, and as keywords any of ShampooConfig's group fields (momentum (β1), factor_beta (β2), power,
    one_sided, precondition_frequency (f), epsilon (ε), bias_correction, graft, graft_beta2, graft_eps,
    root_method, adam_betas and adam_eps: the AdamW groups'), weight_decay (λ) and algorithm: the defaults of
    every group, ShampooConfig's (a group may override any of them).
    """

    def __init__(self, params, lr: float = LR, **settings):
        super().__init__(params, group_defaults(ShampooConfig, lr, settings, algorithm="shampoo", weight_decay=0.0))
        for group in self.param_groups:
            if group["algorithm"] not in ("shampoo", *AUXILIARY):
                raise ValueError(f"Shampoo param group algorithm must be 'shampoo', 'adamw' or 'prodigy', "
                                 f"got {group['algorithm']!r}")
            if group["algorithm"] == "shampoo":
                if group["graft"] not in GRAFTS:
                    raise ValueError(f"unknown graft {group['graft']!r}; choose from {', '.join(GRAFTS)}")
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(f"Shampoo preconditions matrices; a parameter of shape {tuple(p.shape)} "
                                         f"belongs in an 'adamw' group")

    # The step's three parts (distributed/sharding.py): `updates` (the owner's Shampoo steps),
    # `apply_update` (Muon's: decay, then the step) and `step_replicated` (the other groups, and the
    # Shampoo groups' step counter, which every rank keeps).

    def is_sharded(self, group: dict) -> bool:
        return group["algorithm"] == "shampoo"

    def sharded_state(self, group: dict, p: Tensor) -> dict[str, Tensor]:
        """Momentum, the factors and their roots (float32 or wider), and the grafted Adam's V."""
        factor = dict(dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
        state = {"momentum_buffer": torch.zeros_like(p)}
        for side in preconditioned_sides(p.shape, group["one_sided"]):
            n = p.size(-2) if side == "left" else p.size(-1)
            state[side] = torch.zeros(*p.shape[:-2], n, n, **factor)
            state[f"{side}_root"] = torch.zeros(*p.shape[:-2], n, n, **factor)
        if group["graft"] == "adam":
            state["graft_sq"] = torch.zeros_like(p)
        return state

    def updates(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        t = group.get("step", 0) + 1
        out = []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state.update(self.sharded_state(group, p))
            out.append(shampoo_update(g, state, t, group))
        return out

    apply_update = staticmethod(decayed_step)

    def step_replicated(self) -> None:
        for group in self.param_groups:
            if group["algorithm"] == "shampoo":
                group["step"] = group.get("step", 0) + 1
            else:  # Muon's AdamW or Prodigy
                auxiliary_step(group, self.state)

    def metrics(self) -> dict[str, float]:
        """The distance estimate d of each Prodigy role (empty without one)."""
        return auxiliary_metrics(self.param_groups)


def build(groups: list[dict], s: ShampooConfig, device: torch.device) -> Shampoo:
    """One group per role: hidden is Shampoo's, the "adamw" roles AdamW's, the "prodigy" roles
    Prodigy's (with ProdigyConfig's defaults)."""
    return Shampoo(role_groups(groups, "shampoo"), **s.group_settings())


SPEC = OptimizerSpec(
    name="shampoo", lr=LR, settings=ShampooConfig, build=build,
    about="Shampoo: Kronecker-factored preconditioning (spectral descent without its averages) for hidden "
          "matrices, Adam-grafted; AdamW (or Prodigy) for the rest",
)
