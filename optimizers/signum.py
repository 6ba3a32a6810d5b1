"""Signum: sign descent with momentum (Bernstein et al., 2018), the ℓ∞ steepest descent baseline.

    m <- β·m + (1 − β)·g
    W <- (1 − lr·λ)·W − lr·sign(m)

With β = 0 this is sign descent, which is what Adam becomes without its moving averages
(β1 = β2 = 0, ε → 0): m/√v = g/|g| = sign(g).

Config: `[optim] name = "signum"`, settings in `[optim.signum]` (SignumConfig: an untuned baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.roles import ROLES
from optimizers.base import Optimizer
from optimizers.spec import MomentumWarmup, OptimizerSettings, OptimizerSpec, Role, group_defaults

LR = 0.001  # optim.lr: the hidden matrices' learning rate


@dataclass(frozen=True)
class SignumConfig(MomentumWarmup, OptimizerSettings):
    """[optim.signum]: sign descent with momentum for every role (learning rates untuned)."""

    momentum: float = 0.9  # β
    momentum_warmup_from: float | None = None  # the momentum ramps linearly from this ...
    momentum_warmup_steps: int = 0  # ... to `momentum` over these steps (0: no warm-up)
    embed: Role = Role("sign", lr=0.01)
    hidden: Role = Role("sign")
    head: Role = Role("sign", lr=0.001)
    scalar: Role = Role("sign", lr=0.01)

    role_norms = {role: ("sign",) for role in ROLES}
    role_rule = "is not the sign norm: optim.name = 'signum' is sign descent for every role"

    def check(self) -> None:
        super().check()
        self.check_momentum()


def signum_update(params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], lr: float, momentum: float,
                  weight_decay: float) -> None:
    """m <- β·m + (1 − β)·g;  W <- (1 − lr·λ)·W − lr·sign(m), for a list of tensors in a few foreach kernels."""
    torch._foreach_lerp_(momenta, grads, 1 - momentum)
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_add_(params, torch._foreach_sign(momenta), alpha=-lr)


class Signum(Optimizer):
    """Args: lr, momentum (β; SignumConfig's default), weight_decay (λ): every group's defaults."""

    def __init__(self, params, lr: float = LR, **settings):
        super().__init__(params, group_defaults(SignumConfig, lr, settings, weight_decay=0.0))

    def update(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                momenta = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad)) for p in params]
                signum_update(params, [p.grad for p in params], momenta, group["lr"], group["momentum"],
                              group["weight_decay"])


def build(groups: list[dict], s: SignumConfig, device: torch.device) -> Signum:
    for g in groups:
        del g["norm"], g["scale"]
    return Signum(groups, **s.group_settings())


SPEC = OptimizerSpec(
    name="signum", lr=LR, settings=SignumConfig, build=build,
    about="Signum: sign descent with momentum for every role (steepest descent in the ℓ∞ / max-of-max norm)",
)
