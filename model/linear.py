"""Initialization of hidden weight matrices shared by attention and MLP.

Uniform with standard deviation 0.5 / sqrt(fan_in), the scale used by the modded-nanogpt records
(half of PyTorch's default nn.Linear bound).
"""

import math

import torch
from torch import Tensor


@torch.no_grad()
def init_hidden_(w: Tensor) -> Tensor:
    """w: (..., d_out, d_in), initialized in place."""
    bound = math.sqrt(3) * 0.5 / math.sqrt(w.size(-1))
    return w.uniform_(-bound, bound)
