"""Signum: sign descent with momentum (Bernstein et al., 2018), the ℓ∞ steepest descent baseline.

    m <- β·m + (1 − β)·g
    W <- (1 − lr·λ)·W − lr·sign(m)

With β = 0 this is sign descent, which is what Adam becomes without its moving averages
(β1 = β2 = 0, ε → 0): m/√v = g/|g| = sign(g).
"""

from __future__ import annotations

import torch


class Signum(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                m = state["momentum_buffer"].lerp_(p.grad, 1 - beta)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(torch.sign(m), alpha=-lr)
        return loss
