"""Divergence: noticing a non-finite loss at every step without a host sync per step.

Each step's loss goes into a device-side record of the first step whose loss was not finite
(`observe`: two small device ops, no sync). The record is read only at the boundaries where the
trainer synchronizes anyway: log lines, validations, checkpoints (`check`: one read, and one
all-reduce with several ranks so that every rank stops at the same point). A checkpoint is only
written after `check` and `weights_finite` passed, so a checkpoint never holds a diverged state and
the newest checkpoint is always the last good one.
"""

from __future__ import annotations

import torch
from torch import nn

from distributed.process_group import DistInfo, all_reduce_min

NEVER = 2**62  # "no bad step yet"


class Diverged(RuntimeError):
    pass


class DivergenceGuard:
    def __init__(self, device: torch.device, first_bad: int = NEVER):
        self.first_bad = torch.full((), first_bad, dtype=torch.int64, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Remember `step` (1-based: the step that produced `loss`) if `loss` is not finite and no
        earlier step was; device-side only."""
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad, self.first_bad.clamp(max=step), self.first_bad)

    def check(self, info: DistInfo) -> None:
        """Raise Diverged naming the first step whose training loss was not finite (on any rank)."""
        first = all_reduce_min(self.first_bad.clone(), info).item()
        if first < NEVER:
            raise Diverged(f"non-finite training loss at step {first}")


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (one host sync)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
