"""The base class of this library's optimizers: torch's closure protocol, written once."""

from __future__ import annotations

import torch


class Optimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer whose `step(closure)` evaluates the closure (with gradients enabled)
    and then calls `update()`, the subclass's update rule, without gradients."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.update()
        return loss

    def update(self) -> None:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, then every group completed with the defaults it lacks (a checkpoint of an older version
        has only the keys its groups had then)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @staticmethod
    def holds_state_in_grad(group: dict) -> bool:
        """True for groups that keep optimizer state in p.grad (the trainer must not reset it)."""
        return False
