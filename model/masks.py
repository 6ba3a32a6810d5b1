"""Which keys each query may attend to: causal, within its own document, within a sliding window.

Documents are split at the end-of-text token, which begins every document, so a token's document
id is the number of end-of-text tokens at or before it. Query q may see key k when

    k <= q   and   doc[k] == doc[q]   and   q - k < window   (window = 0: no window).

With `window_blocks` the window is counted in whole 128-token blocks, as the speedrun records
count it: query q may see key k when (q // 128) - (k // 128) < max(1, window // 128) (and causal, same
document): a window shorter than one block (the 'S' blocks' half of the warm-up's first 128 tokens)
still keeps the query's own block, the diagonal, as the record's block mask does. A query block then
touches max(1, window // 128) key blocks, where the exact per-token window
touches one partial block more (for the record's 1,792-token window: 15 instead of 14 blocks, about
7% more attention work, and 2x for the 'S' blocks' 896 tokens: 8 instead of 7).

Two encodings of the same rule: a dense boolean mask for the exact fallback attention (any device),
and a FlexAttention BlockMask that lists, per 128-token query block, the key blocks that are fully
visible (no mask evaluation needed) and the partially visible ones (mask evaluated per element).
"""

import functools

import torch
from torch import Tensor

BLOCK = 128  # FlexAttention's block size


def document_ids(tokens: Tensor, eot_token: int) -> Tensor:
    """(B, T) token ids -> (B, T) document index of each position (non-decreasing per row)."""
    return (tokens == eot_token).cumsum(dim=-1)


def window_block_count(window: Tensor | int) -> Tensor | int:
    """Key blocks a query block sees under a block-granular window (model.window_blocks): window // 128,
    but at least its own block (a tensor for a tensor window)."""
    if isinstance(window, Tensor):
        return torch.clamp(window // BLOCK, min=1)
    return max(1, window // BLOCK)


def dense_mask(docs: Tensor, window: Tensor | int = 0, window_blocks: bool = False) -> Tensor:
    """(B, T) document ids -> (B, 1, T, T) boolean mask, True where the query may see the key."""
    T = docs.size(-1)
    pos = torch.arange(T, device=docs.device)
    delta = pos[:, None] - pos[None, :]  # q - k
    allowed = (delta >= 0) & (docs[:, :, None] == docs[:, None, :])
    window = torch.as_tensor(window, device=docs.device)
    if window_blocks:
        blocks = pos // BLOCK
        allowed = allowed & ((window <= 0) | (blocks[:, None] - blocks[None, :] < window_block_count(window)))
    else:
        allowed = allowed & ((window <= 0) | (delta < window))
    return allowed[:, None]


def flex_block_mask(docs: Tensor, window: Tensor | int = 0, window_blocks: bool = False, compiled: bool | None = None):
    """(B, T) document ids -> BlockMask for flex_attention encoding the same rule as dense_mask.

    Built directly from per-block document ranges (no dense T x T evaluation), so it is cheap
    enough to rebuild every step. T must be a multiple of BLOCK. The block index tensors come from
    one compiled function on CUDA (`compiled`; None: when docs are on CUDA): a few fused kernels
    instead of some twenty eager launches per mask, twice per step (the 'L' and the 'S' blocks'),
    which matters where the model is compiled block by block and the masks are built outside.
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, T = docs.shape
    if T % BLOCK:
        raise ValueError(f"flex attention needs the sequence length ({T}) to be a multiple of {BLOCK}")
    window = torch.as_tensor(window, device=docs.device)
    build = _compiled_kv_blocks() if (docs.is_cuda if compiled is None else compiled) else kv_blocks
    partial_num, partial_idx, full_num, full_idx = build(docs, window, window_blocks)
    no_window = window <= 0

    def mask_mod(b, h, q, k):
        ok = (q >= k) & (docs[b, q] == docs[b, k])
        return ok if window_blocks else ok & (no_window | (q - k < window))  # block windows: no per-token cut

    return BlockMask.from_kv_blocks(
        partial_num, partial_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(T, T)
    )


def kv_blocks(docs: Tensor, window: Tensor, window_blocks: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The BlockMask's key-block lists: for each 128-token query block, the partially visible key blocks
    (count, indices) and the fully visible ones (count, indices), each (B, 1, nb[, nb])."""
    B, T = docs.shape
    nb = T // BLOCK
    blocks = docs.view(B, nb, BLOCK)
    lo, hi = blocks[..., 0], blocks[..., -1]  # first and last document id in each block
    idx = torch.arange(nb, device=docs.device)
    gap = BLOCK * (idx[:, None] - idx[None, :])  # (q block - kv block) * BLOCK

    # a key block is "any": some (q, k) pair is visible; "full": every pair is visible
    causal_any = gap >= 0
    causal_full = gap > 0
    doc_any = (lo[:, :, None] <= hi[:, None, :]) & (hi[:, :, None] >= lo[:, None, :])
    doc_full = (lo[:, :, None] == hi[:, :, None]) & (hi[:, :, None] == lo[:, None, :]) & (lo[:, None, :] == hi[:, None, :])
    no_window = window <= 0
    if window_blocks:  # whole key blocks: each is inside the window or outside it
        win_any = win_full = no_window | (gap < BLOCK * window_block_count(window))
    else:
        win_any = no_window | (gap - (BLOCK - 1) < window)
        win_full = no_window | (gap + (BLOCK - 1) < window)
    any_ = causal_any & doc_any & win_any
    full = causal_full & doc_full & win_full
    partial = any_ & ~full
    return (*_to_kv(partial), *_to_kv(full))


def _to_kv(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, nb, nb) visible key blocks -> their count (B, 1, nb) and their indices first (B, 1, nb, nb)."""
    num = mask.sum(dim=-1, dtype=torch.int32)[:, None]
    order = mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
    return num.contiguous(), order[:, None].contiguous()


@functools.cache
def _compiled_kv_blocks():
    return torch.compile(kv_blocks, dynamic=False)
