"""Rotary position embeddings (RoPE), optionally on only a fraction of each head's dimensions.

Dimension pair (i, i + D/2) of a head of size D is rotated by the angle t * w_i at position t.
The first `fraction * D/2` pairs get frequencies w_i = base^(-i / (n - 1)), i = 0..n-1 (from 1 down
to 1/base); the remaining pairs get w_i = 0 and are left as they are. With base 1024 and fraction
0.5 this is the "half-truncated RoPE" of the modded-nanogpt records.
"""

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0, fraction: float = 1.0):
        super().__init__()
        pairs = head_dim // 2
        n_rot = max(1, round(fraction * pairs))
        freqs = base ** -torch.linspace(0, 1, n_rot, dtype=torch.float32)
        freqs = torch.cat([freqs, freqs.new_zeros(pairs - n_rot)])
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)  # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, H, D) -> same shape, rotated by position along T."""
        T = x.size(1)
        if T > self.cos.size(0):
            raise ValueError(f"sequence length {T} exceeds the rotary table ({self.cos.size(0)})")
        cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]
        x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)  # >= fp32
        y1 = x1 * cos + x2 * sin
        y2 = x2 * cos - x1 * sin
        return torch.cat((y1, y2), dim=-1).type_as(x)
