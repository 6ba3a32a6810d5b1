"""Causal self-attention with rotary embeddings, QK-norm and optional value embeddings.

The attention itself runs through one of two kernels that compute the same function:
FlexAttention with a block-sparse mask (fast on CUDA) or PyTorch's scaled_dot_product_attention
with a dense boolean mask (exact fallback that runs anywhere). See model/masks.py for the rule.
Without document masking and without a window (track 3: plain causal attention over each row) the
SDPA kernel takes no mask at all (`is_causal`).

Q, K and V are one parameter of shape (3, heads·head_dim, width): a stack of three separate
matrices, each orthogonalized (Muon) or normalized (Scion) on its own, since the optimizers treat
leading dimensions as a batch of independent matrices. With model.bias their biases are one vector
of 3·heads·head_dim entries (the q, k and v biases one after the other; every optimizer treats a
vector elementwise or as a whole, never per head).

Switches for the Lipschitz transformer (Newhouse et al., 2025): `qk_norm = False` drops the RMSNorm of
queries and keys (model.qk_norm), and `out_scale` multiplies the heads' output before the output
projection (model.attn_out_scale; the paper's 1/3). The logit scale 1/head_dim instead of 1/√head_dim is
chosen by the model (model.attn_scale_rule) and arrives here as `scale`.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.linear import init_hidden_
from model.masks import dense_mask, flex_block_mask
from model.rotary import Rotary


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


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """(B, H, T, D) inputs, (B, 1, T, T) boolean mask; None: plain causal attention."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def make_mask(kind: str, docs: Tensor, window: Tensor | int, causal_only: bool = False, window_blocks: bool = False):
    """The mask object `attend` expects for this kernel: a BlockMask (flex) or a dense bool tensor,
    or None for SDPA when `causal_only` (docs all one document and no window: is_causal suffices).
    window_blocks: the window counts whole 128-token key blocks (model/masks.py)."""
    if kind == "flex":
        return flex_block_mask(docs, window, window_blocks)
    return None if causal_only else dense_mask(docs, window, window_blocks)


def attend(kind: str, q: Tensor, k: Tensor, v: Tensor, mask, scale: float) -> Tensor:
    if kind == "flex":
        return flex_attention(q, k, v, mask, scale)
    return sdpa_attention(q, k, v, mask, scale)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int, max_seq_len: int, *, scale: float = 0.0,
                 rope_base: float = 10000.0, rope_fraction: float = 1.0, value_mix: bool = False,
                 bias: bool = False, init: str = "uniform", qk_norm: bool = True, out_scale: float = 1.0):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qk_norm, self.out_scale = qk_norm, out_scale
        inner = heads * head_dim
        self.qkv_w = nn.Parameter(torch.empty(3, inner, width))  # Q, K, V: three matrices in one tensor
        self.qkv_b = nn.Parameter(torch.zeros(3 * inner)) if bias else None  # their biases, q then k then v
        self.proj = nn.Linear(inner, width, bias=bias)
        # v <- lambdas[0] * v + lambdas[1] * value_embedding (value residual); absent when unused
        self.lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if value_mix else None
        self.rotary = Rotary(head_dim, max_seq_len, rope_base, rope_fraction)
        self.scale = scale or head_dim**-0.5
        init_hidden_(self.qkv_w, init)
        nn.init.zeros_(self.proj.weight)  # zero-initialized output projection
        if bias:
            nn.init.zeros_(self.proj.bias)

    def param_roles(self) -> dict[str, str]:
        roles = {"qkv_w": "hidden", "proj.weight": "hidden"}
        if self.qkv_b is not None:
            roles.update({"qkv_b": "scalar", "proj.bias": "scalar"})
        if self.lambdas is not None:
            roles["lambdas"] = "scalar"
        return roles

    def forward(self, x: Tensor, kind: str, mask, ve: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        qkv = F.linear(x, self.qkv_w.flatten(0, 1), self.qkv_b).view(B, T, 3 * self.heads, self.head_dim)
        q, k, v = qkv.chunk(3, dim=2)  # each (B, T, H, D)
        if self.qk_norm:  # QK-norm
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = self.rotary(q), self.rotary(k)
        if self.lambdas is not None:
            v = self.lambdas[0] * v
            if ve is not None:
                v = v + self.lambdas[1] * ve.view_as(v)
        # one dtype for the kernel: the projection's (bf16 under autocast; norms and the value
        # embeddings may have promoted q, k or v to fp32)
        q, k, v = (t.to(qkv.dtype).transpose(1, 2) for t in (q, k, v))
        y = attend(kind, q, k, v, mask, self.scale)
        if self.out_scale != 1.0:
            y = y * self.out_scale
        y = y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)
        return self.proj(y)
