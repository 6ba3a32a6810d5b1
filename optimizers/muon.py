"""Muon: momentum, then orthogonalize the update (single device).

For each hidden matrix W with gradient G:

    M <- beta M + (1 - beta) G                    (momentum, as an EMA)
    D <- (1 - beta) G + beta M   if nesterov else M
    W <- (1 - lr wd) W - lr * max(1, d_out/d_in)^(1/2) * NS(D)

NS is the quintic Newton-Schulz orthogonalization (optimizers/orthogonalize.py). Parameters
with a leading batch dimension (e.g. a merged (3, d, d) QKV weight) are orthogonalized per matrix.
"""

import torch
from torch import Tensor

from optimizers.orthogonalize import newton_schulz


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon needs matrices; got a parameter of shape {tuple(p.shape)}")

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
                update = muon_update(p.grad, state["momentum_buffer"], beta, group["nesterov"], group["ns_steps"])
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update.to(p.dtype), alpha=-lr)
        return loss


def muon_update(grad: Tensor, buf: Tensor, beta: float, nesterov: bool, ns_steps: int) -> Tensor:
    """Updates the momentum buffer in place and returns the scaled, orthogonalized direction."""
    buf.lerp_(grad, 1 - beta)
    d = grad.lerp(buf, beta) if nesterov else buf
    scale = max(1.0, grad.size(-2) / grad.size(-1)) ** 0.5
    return newton_schulz(d, ns_steps) * scale
