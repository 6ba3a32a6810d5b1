"""The feed-forward block: Linear -> activation -> Linear (output projection zero-initialized; biases,
when model.bias is on, zero-initialized too). The activation (model.activation):

    relu2        relu(x)²                        (the speedrun records; not Lipschitz on all of R)
    gelu_scaled  GELU(x) / max GELU' = GELU(x) / 1.128904   (1-Lipschitz, φ(0) = 0: the Lipschitz
                 transformer of Newhouse et al., 2025, who divide by 1.1289; GELU is the exact erf form,
                 whose largest slope is Φ(√2) + √2·φ(√2) = (1 + erf 1)/2 + e⁻¹/√π, at x = √2)
"""

import math

import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ACTIVATIONS
from model.linear import init_hidden_

GELU_MAX_SLOPE = (1 + math.erf(1)) / 2 + math.exp(-1) / math.sqrt(math.pi)  # max of GELU'(x), at x = √2


def activation(x: Tensor, kind: str) -> Tensor:
    if kind == "relu2":
        return F.relu(x).square()
    if kind == "gelu_scaled":
        return F.gelu(x) / GELU_MAX_SLOPE
    raise ValueError(f"unknown activation {kind!r}; choose from {', '.join(ACTIVATIONS)}")


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int = 4, *, bias: bool = False, init: str = "uniform",
                 activation: str = "relu2"):
        super().__init__()
        self.activation = activation
        self.fc = nn.Linear(width, ratio * width, bias=bias)
        self.proj = nn.Linear(ratio * width, width, bias=bias)
        init_hidden_(self.fc.weight, init)
        nn.init.zeros_(self.proj.weight)
        for linear in (self.fc, self.proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def param_roles(self) -> dict[str, str]:
        roles = {"fc.weight": "hidden", "proj.weight": "hidden"}
        if self.fc.bias is not None:
            roles.update({"fc.bias": "scalar", "proj.bias": "scalar"})
        return roles

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(activation(self.fc(x), self.activation))
