"""AdamW for every role (torch.optim.AdamW, fused on CUDA): the baseline the others are compared to.

    m <- β1·m + (1 − β1)·g,   v <- β2·v + (1 − β2)·g²
    W <- (1 − lr·λ)·W − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)

Config: `[optim] name = "adamw"`, settings in `[optim.adamw]` (AdamWConfig).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.roles import ROLES
from optimizers.spec import ADAMW, OptimizerSettings, OptimizerSpec, Role, check_positive, check_range

LR = 0.0018  # optim.lr: the hidden matrices' learning rate (llm.c's GPT-2 value)


@dataclass(frozen=True)
class AdamWConfig(OptimizerSettings):
    """[optim.adamw]: hidden matrices at optim.lr, the other roles at the 2025-01-26 record's Adam
    learning rates."""

    betas: tuple[float, float] = (0.9, 0.95)  # (β1, β2): the moving averages of g and g²
    eps: float = 1e-8  # ε added to √v
    embed: Role = Role(ADAMW, lr=0.6)
    hidden: Role = Role(ADAMW)
    head: Role = Role(ADAMW, lr=0.008)
    scalar: Role = Role(ADAMW, lr=0.04)

    role_norms = {role: (ADAMW,) for role in ROLES}
    role_rule = "is not 'adamw': optim.name = 'adamw' trains every role with AdamW"

    def check(self) -> None:
        super().check()
        for i, beta in enumerate(self.betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0)
        check_positive("eps", self.eps)


def build(groups: list[dict], s: AdamWConfig, device: torch.device) -> torch.optim.AdamW:
    for g in groups:
        del g["norm"], g["scale"]
    return torch.optim.AdamW(groups, betas=tuple(s.betas), eps=s.eps, fused=device.type == "cuda")


SPEC = OptimizerSpec(
    name="adamw", lr=LR, settings=AdamWConfig, build=build,
    about="AdamW (torch's, fused on CUDA) for every role",
)
