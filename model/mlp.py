"""The feed-forward block: Linear -> ReLU^2 -> Linear (output projection zero-initialized)."""

import torch.nn.functional as F
from torch import Tensor, nn

from model.linear import init_hidden_


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int = 4):
        super().__init__()
        self.fc = nn.Linear(width, ratio * width, bias=False)
        self.proj = nn.Linear(ratio * width, width, bias=False)
        init_hidden_(self.fc.weight)
        nn.init.zeros_(self.proj.weight)

    def param_roles(self) -> dict[str, str]:
        return {"fc.weight": "hidden", "proj.weight": "hidden"}

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.relu(self.fc(x)).square())
