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

from model.roles import ROLES
from optimizers.base import Optimizer
from optimizers.spec import MomentumWarmup, OptimizerSettings, OptimizerSpec, Role

LR = 0.001  # optim.lr: the hidden matrices' learning rate


@dataclass(frozen=True)
class SignumConfig(MomentumWarmup, OptimizerSettings):
    """[optim.signum]: sign descent with momentum for every role (learning rates untuned)."""

    momentum: float = 0.9
    momentum_warmup_from: float | None = None
    momentum_warmup_steps: int = 0
    embed: Role = Role("sign", lr=0.01)
    hidden: Role = Role("sign")
    head: Role = Role("sign", lr=0.001)
    scalar: Role = Role("sign", lr=0.01)

    role_norms = {role: ("sign",) for role in ROLES}
    role_rule = "is not the sign norm: optim.name = 'signum' is sign descent for every role"

    def check(self) -> None:
        super().check()
        self.check_momentum()


_D = SignumConfig()


class Signum(Optimizer):
    def __init__(self, params, lr: float = LR, momentum: float = _D.momentum, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def update(self) -> None:
        """m <- β·m + (1 − β)·g;  W <- (1 − lr·λ)·W − lr·sign(m), each group in a few foreach kernels."""
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            ms = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(ms, [p.grad for p in params], 1 - beta)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_add_(params, torch._foreach_sign(ms), alpha=-lr)


def build(groups: list[dict], s: SignumConfig, device: torch.device) -> Signum:
    for g in groups:
        del g["norm"], g["scale"]
    return Signum(groups, momentum=s.momentum)


SPEC = OptimizerSpec(
    name="signum", lr=LR, settings=SignumConfig, build=build,
    about="Signum: sign descent with momentum for every role (steepest descent in the ℓ∞ / max-of-max norm)",
)
