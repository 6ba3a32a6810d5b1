"""Initialization of the hidden weight matrices (attention q/k/v, MLP in), chosen by model.hidden_init:

    uniform   U(−a, a) with standard deviation 0.5 / sqrt(fan_in): the modded-nanogpt speedrun records
              (half of PyTorch's default nn.Linear bound)
    normal    N(0, 0.33 / fan_in): the optimization benchmark's plain GPT (track 3), whose variance is
              that of PyTorch's default nn.Linear init, 1 / (3 fan_in)
    orthogonal  √(d_out / d_in) · (a random orthogonal matrix): every singular value of the RMS→RMS map is 1
              (the Lipschitz transformer's reference code, modula's Linear: the polar factor of a Gaussian)

Output projections (attention out, MLP out, the head) are zero-initialized by their modules, biases
too; fan_in is the last dimension of a (..., d_out, d_in) weight.
"""

import math

import torch
from torch import Tensor

from model.config import HIDDEN_INITS


@torch.no_grad()
def init_hidden_(w: Tensor, kind: str = "uniform") -> Tensor:
    """w: (..., d_out, d_in), initialized in place."""
    fan_in = w.size(-1)
    if kind == "uniform":
        bound = math.sqrt(3) * 0.5 / math.sqrt(fan_in)
        return w.uniform_(-bound, bound)
    if kind == "normal":
        return w.normal_(0.0, math.sqrt(0.33 / fan_in))
    if kind == "orthogonal":
        for m in w.view(-1, *w.shape[-2:]):  # each matrix of a batch (e.g. q, k, v) on its own
            m.copy_(torch.nn.init.orthogonal_(torch.empty_like(m, dtype=torch.float64)))
        return w.mul_(math.sqrt(w.size(-2) / fan_in))
    raise ValueError(f"unknown hidden init {kind!r}; choose from {', '.join(HIDDEN_INITS)}")
