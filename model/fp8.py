"""FP8 matmuls of the output layer, as the speedrun records run them on Hopper GPUs (model.fp8_head).

    forward    z = (x·s_x)₈ (W·s_w)₈ᵀ / (s_x s_w)                       e4m3 operands, bf16 result
    backward   dL/dx = (g·s_g)₈ (W·s_w)₈ / (s_g s_w)                     g = dL/dz in e5m2, bf16 result
               dL/dW = (g·s_g)₈ᵀ (x·s_x)₈ / (s_g s_x)                    fp32 result

(·)₈ rounds to float8 after scaling by a fixed per-tensor power of two: e4m3 (more mantissa) for
the forward operands, e5m2 (more range) for the gradient. The scales are those of the record of
2025-01-26 (s_x = 2, s_w = 2⁹, s_g = 2¹⁹), chosen for its 768-wide head, its logits soft-capped at
15 and its mean loss over 48Ki tokens per GPU (so dL/dz is of order 1/49152). Only training uses
FP8; validation computes the head in bf16, as the record does. torch._scaled_mm runs these on
CUDA devices with FP8 tensor cores (compute capability 8.9 and up) and, slowly, on the CPU (tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

X_SCALE, W_SCALE, GRAD_SCALE = 2.0, 2.0**9, 2.0**19
FORWARD, BACKWARD = torch.float8_e4m3fn, torch.float8_e5m2


def quantize(t: Tensor, scale: float, dtype: torch.dtype = FORWARD) -> Tensor:
    """t·scale rounded to a float8 dtype (row-major)."""
    return t.mul(scale).to(dtype).contiguous()


def column_major(t: Tensor) -> Tensor:
    """The same matrix stored column by column: _scaled_mm's layout for its second operand. The
    quantized head needs it in every chunk's backward, so the loss makes it once per step."""
    return t.t().contiguous().t()


def _scaled_mm(a: Tensor, b: Tensor, scale: float, out_dtype: torch.dtype, fast: bool) -> Tensor:
    one = torch.ones((), dtype=torch.float32, device=a.device)
    return torch._scaled_mm(a, b, scale_a=one / scale, scale_b=one, out_dtype=out_dtype, use_fast_accum=fast)


def forward(x8: Tensor, w8: Tensor) -> Tensor:
    """z = x Wᵀ from the quantized x (n, width) and W (vocab, width), in bf16."""
    return _scaled_mm(x8, w8.t(), X_SCALE * W_SCALE, torch.bfloat16, fast=True)


def backward(g: Tensor, x8: Tensor, w8_cm: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dx in bf16, dL/dW in fp32) from g = dL/dz (n, vocab), the forward's quantized x and the
    quantized W in column-major layout (`column_major(w8)`)."""
    g8 = quantize(g, GRAD_SCALE, BACKWARD)
    grad_x = _scaled_mm(g8, w8_cm, GRAD_SCALE * W_SCALE, torch.bfloat16, fast=False)
    grad_w = _scaled_mm(x8.t().contiguous(), column_major(g8), GRAD_SCALE * X_SCALE, torch.float32, fast=False)
    return grad_x, grad_w.t()


def supported(device: torch.device) -> bool:
    """Whether FP8 matmuls run on this device at speed (CUDA compute capability >= 8.9)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
