"""Prodigy (Mishchenko & Defazio, 2023): Adam whose step size d·lr learns the distance to the solution.

Each param group (one per parameter role) keeps its own estimate d, which starts at d0 and only
grows. At step k (from 1), with γ = lr (times √(1 − β2ᵏ) / (1 − β1ᵏ) with bias correction), for
every tensor x of the group with gradient g and initial value x0:

    m <- β1·m + (1 − β1)·d·g,        v <- β2·v + (1 − β2)·d²·g²          Adam's moments, scaled by d
    r <- β3·r + γ·d²·⟨g, x0 − x⟩     (summed over the group's tensors)
    s <- β3·s + γ'·d²·g              (γ' = γ; the safeguard warm-up uses γ' = 1: no lr, no bias correction)
    if ‖s‖₁ = 0 (no gradient yet): no step, d unchanged
    d̂ = c·r / ‖s‖₁ (over the group),   d_max <- max(d_max, d̂)
    d' = min(d_max, growth·d), where the first increase from d0 starts from max(d0, d̂): uncapped
    x <- (1 − γ·d·λ)·x − γ·d · m / (√v + d'·ε)                          decoupled weight decay λ; then d <- d'

This is the published algorithm as its reference implementation (konstmish/prodigy, prodigy.py) runs it:
the step is taken with the old d and ε scaled by the new one. The paper's r and s carry a factor
(1 − β3) each, which cancels in d̂; both are kept divided by d0 here so that their values stay far from
float32's smallest numbers (the reference's choice). β3 = √β2 unless set; c = d_coef (1), growth = ∞
unless set (growth 1 freezes d). With d frozen this is Adam at learning rate lr·d (m/√v does not see the
common factor d); with β1 = β2 = 0 and ε → 0 it is sign descent, steepest descent in the ℓ∞ norm.

Differences from the reference, each an option (default: the reference's behaviour), except the first:
- d is estimated per role (param group) rather than once for the whole model;
- `cap_first_increase = true`: growth also caps the first increase from d0 (d then needs
  log(d̂/d0)/log(growth) steps to get anywhere from d0 = 1e-6);
- `eps_with_step_d = true`: ε is scaled by the d of the step (the paper's d_k in Algorithm 2) rather than
  by the updated d.

`metrics()` gives d per role, as {"prodigy_d_<role>": d}. Config: `[optim] name = "prodigy"`
(every role), settings in `[optim.prodigy]` (ProdigyConfig). Shampoo takes Prodigy for its
auxiliary roles too (role norm "prodigy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.roles import ROLES
from optimizers.base import Optimizer
from optimizers.spec import (
    OptimizerSettings,
    OptimizerSpec,
    OptionError,
    Role,
    check_positive,
    check_range,
    group_defaults,
)

PRODIGY = "prodigy"  # a role "norm" that means: a Prodigy step (Adam-like: ℓ∞ steepest descent without EMAs)
LR = 1.0  # optim.lr: a multiplier of the learned step size d (the paper: leave it at 1)


@dataclass(frozen=True)
class ProdigyConfig(OptimizerSettings):
    """[optim.prodigy]: every role with Prodigy at lr 1. Defaults: the paper and its reference
    implementation (d0 1e-6, betas (0.9, 0.999), β3 = √β2, ε 1e-8, d_coef 1, no growth limit, bias
    correction and safeguard warm-up off, no weight decay)."""

    betas: tuple[float, float] = (0.9, 0.999)  # Adam's (β1, β2)
    beta3: float | None = None  # the EMA of r and s; unset: √β2
    eps: float = 1e-8  # ε (times d) added to √v
    d0: float = 1e-6  # the initial distance estimate
    d_coef: float = 1.0  # c: d̂ is multiplied by it (the reference's preferred tuning knob)
    growth_rate: float | None = None  # d grows by at most this factor per step; unset: no limit
    use_bias_correction: bool = False  # Adam's bias correction in the step size γ
    safeguard_warmup: bool = False  # leave lr out of s (recommended with an lr warm-up)
    cap_first_increase: bool = False  # growth_rate caps d's first increase from d0 too (the reference: uncapped)
    eps_with_step_d: bool = False  # eps x the d of the step, not the updated d (the reference's)
    embed: Role = Role(PRODIGY)
    hidden: Role = Role(PRODIGY)
    head: Role = Role(PRODIGY)
    scalar: Role = Role(PRODIGY)

    role_norms = {role: (PRODIGY,) for role in ROLES}
    role_rule = "is not 'prodigy': optim.name = 'prodigy' trains every role with Prodigy"

    def check(self) -> None:
        super().check()
        for i, beta in enumerate(self.betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0)
        if self.beta3 is not None:
            check_range("beta3", self.beta3, 0.0, 1.0)
        check_positive("eps", self.eps)
        check_positive("d0", self.d0)
        check_positive("d_coef", self.d_coef)
        if self.growth_rate is not None and not (math.isfinite(self.growth_rate) and self.growth_rate >= 1.0):
            raise OptionError("growth_rate", f"must be a finite number >= 1 (1 freezes d), got {self.growth_rate}")


@torch.no_grad()
def prodigy_step(group: dict, state: dict) -> None:
    """One Prodigy step of a param group (the equations of the module docstring). The group keeps
    d, d_max, the numerator r (over d0) and the step count k; each tensor keeps m, v, s (over d0), x0."""
    beta1, beta2 = group["betas"]
    beta3 = math.sqrt(beta2) if group["beta3"] is None else group["beta3"]
    d, d0, k = group.setdefault("d", group["d0"]), group["d0"], group.get("k", 0) + 1
    gamma = group["lr"] * (math.sqrt(1 - beta2**k) / (1 - beta1**k) if group["use_bias_correction"] else 1.0)
    gamma_s = 1.0 if group["safeguard_warmup"] else gamma
    params = [p for p in group["params"] if p.grad is not None]
    r, s_norm = beta3 * group.get("d_numerator", 0.0), 0.0
    for p in params:
        st, g = state[p], p.grad
        if "exp_avg" not in st:
            st.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p), s=torch.zeros_like(p),
                      x0=p.detach().clone())
        r = r + (gamma * d * d / d0) * torch.vdot(g.flatten(), (st["x0"] - p).flatten())
        st["exp_avg"].mul_(beta1).add_(g, alpha=d * (1 - beta1))
        st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=d * d * (1 - beta2))
        s_norm = s_norm + st["s"].mul_(beta3).add_(g, alpha=gamma_s * d * d / d0).abs().sum()
    r, s_norm = float(r), float(s_norm)
    if s_norm == 0:  # no gradient signal yet: the reference takes no step and keeps d, r and k
        return
    d_hat = group["d_coef"] * r / s_norm
    d_max = max(group.get("d_max", d0), d_hat)
    growth = group["growth_rate"]
    base = max(d, d_hat) if d == d0 and not group["cap_first_increase"] else d
    new_d = d_max if growth is None else min(d_max, growth * base)
    eps_d = d if group["eps_with_step_d"] else new_d
    for p in params:
        st = state[p]
        if group["weight_decay"]:
            p.mul_(1 - gamma * d * group["weight_decay"])
        p.addcdiv_(st["exp_avg"], st["exp_avg_sq"].sqrt().add_(eps_d * group["eps"]), value=-gamma * d)
    group.update(d=new_d, d_max=d_max, d_numerator=r, k=k)


def prodigy_metrics(groups: list[dict]) -> dict[str, float]:
    """{"prodigy_d_<role>": d} for Prodigy param groups (a group without a role: its index)."""
    return {f"prodigy_d_{g.get('role', i)}": float(g.get("d", g["d0"])) for i, g in enumerate(groups)}


class Prodigy(Optimizer):
    """Prodigy for every param group, each with its own d (Args: the fields of ProdigyConfig, plus
    lr and weight_decay; a group may override any)."""

    def __init__(self, params, lr: float = LR, **settings):
        super().__init__(params, group_defaults(ProdigyConfig, lr, settings, weight_decay=0.0))

    def update(self) -> None:
        for group in self.param_groups:
            prodigy_step(group, self.state)

    def metrics(self) -> dict[str, float]:
        """The distance estimate d of each role (param group)."""
        return prodigy_metrics(self.param_groups)


def build(groups: list[dict], s: ProdigyConfig, device: torch.device) -> Prodigy:
    for g in groups:
        del g["norm"], g["scale"]
    return Prodigy(groups, **s.group_settings())


SPEC = OptimizerSpec(
    name="prodigy", lr=LR, settings=ProdigyConfig, build=build,
    about="Prodigy: Adam (ℓ∞ steepest descent without its averages) whose step size d grows from d0 to the "
          "estimated distance to the solution, one d per role",
)
