"""RMSNorm, with or without a learned gain (model.norm_gains).

    y = x / sqrt(mean(x²) + ε) · g        (g: one gain per feature, initialized to 1; absent: g = 1)

ε is PyTorch's default for F.rms_norm (the machine epsilon of x's dtype). The speedrun records use
no gains; the optimization benchmark's plain GPT (track 3) has a gain in every RMSNorm except the
QK-norm inside attention (two per block, one after the embedding, one before the head).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, gain: bool = False):
        super().__init__()
        self.dim = dim
        self.gain = nn.Parameter(torch.ones(dim)) if gain else None

    def param_roles(self) -> dict[str, str]:
        return {"gain": "scalar"} if self.gain is not None else {}

    def forward(self, x: Tensor) -> Tensor:
        if self.gain is None:
            return F.rms_norm(x, (self.dim,))
        return F.rms_norm(x, (self.dim,), weight=self.gain.to(x.dtype))
