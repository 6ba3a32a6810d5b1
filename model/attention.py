"""Causal self-attention with rotary embeddings, QK-norm and optional value embeddings.

The attention itself runs through one of two kernels that compute the same function:
FlexAttention with a block-sparse mask (fast on CUDA) or PyTorch's scaled_dot_product_attention
with a dense boolean mask (exact fallback that runs anywhere). See model/masks.py for the rule.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.linear import init_hidden_
from model.masks import dense_mask, flex_block_mask
from model.rotary import Rotary

ATTENTION_KINDS = ("auto", "flex", "sdpa")  # auto: flex on CUDA, sdpa elsewhere


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask, scale: float) -> Tensor:
    """(B, H, T, D) inputs. Compiled on CUDA (fused kernel); eager elsewhere (tests only)."""
    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale)
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    return eager_flex(q, k, v, block_mask=block_mask, scale=scale)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """(B, H, T, D) inputs, (B, 1, T, T) boolean mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def make_mask(kind: str, docs: Tensor, window: Tensor | int):
    """The mask object `attend` expects for this kernel: a BlockMask (flex) or a dense bool tensor."""
    return flex_block_mask(docs, window) if kind == "flex" else dense_mask(docs, window)


def attend(kind: str, q: Tensor, k: Tensor, v: Tensor, mask, scale: float) -> Tensor:
    if kind == "flex":
        return flex_attention(q, k, v, mask, scale)
    return sdpa_attention(q, k, v, mask, scale)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int, max_seq_len: int, *, scale: float = 0.0,
                 rope_base: float = 10000.0, rope_fraction: float = 1.0, value_mix: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv_w = nn.Parameter(torch.empty(3, inner, width))  # merged Q, K, V projections
        self.proj = nn.Linear(inner, width, bias=False)
        # v <- lambdas[0] * v + lambdas[1] * value_embedding (value residual); absent when unused
        self.lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if value_mix else None
        self.rotary = Rotary(head_dim, max_seq_len, rope_base, rope_fraction)
        self.scale = scale or head_dim**-0.5
        init_hidden_(self.qkv_w)
        nn.init.zeros_(self.proj.weight)  # zero-initialized output projection

    def param_roles(self) -> dict[str, str]:
        roles = {"qkv_w": "hidden", "proj.weight": "hidden"}
        if self.lambdas is not None:
            roles["lambdas"] = "scalar"
        return roles

    def forward(self, x: Tensor, kind: str, mask, ve: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        qkv = F.linear(x, self.qkv_w.flatten(0, 1)).view(B, T, 3 * self.heads, self.head_dim)
        q, k, v = qkv.chunk(3, dim=2)  # each (B, T, H, D)
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))  # QK-norm
        q, k = self.rotary(q), self.rotary(k)
        if self.lambdas is not None:
            v = self.lambdas[0] * v
            if ve is not None:
                v = v + self.lambdas[1] * ve.view_as(v)
        # one dtype for the kernel: the projection's (bf16 under autocast; norms and the value
        # embeddings may have promoted q, k or v to fp32)
        q, k, v = (t.to(qkv.dtype).transpose(1, 2) for t in (q, k, v))
        y = attend(kind, q, k, v, mask, self.scale)
        y = y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)
        return self.proj(y)
