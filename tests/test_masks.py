"""The attention masks: the dense rule, and the FlexAttention block mask that must encode it."""

import pytest
import torch

from model.masks import BLOCK, dense_mask, document_ids, flex_block_mask


def random_tokens(B, T, eot, p, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, eot, (B, T), generator=g)
    tokens[torch.rand(B, T, generator=g) < p] = eot
    return tokens


def reference_mask(tokens, eot, window):
    """Straight from the definition, one (q, k) pair at a time."""
    B, T = tokens.shape
    out = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        doc, docs = 0, []
        for t in range(T):
            doc += int(tokens[b, t] == eot)
            docs.append(doc)
        for q in range(T):
            for k in range(q + 1):
                out[b, q, k] = docs[q] == docs[k] and (window <= 0 or q - k < window)
    return out


def effective_block_mask(bm, T):
    """What a block-sparse kernel computes: full blocks are all visible, partial blocks evaluate
    mask_mod per element, unlisted blocks are skipped."""
    B = bm.kv_num_blocks.size(0)
    nb = T // BLOCK
    out = torch.zeros(B, T, T, dtype=torch.bool)
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    for b in range(B):
        elem = bm.mask_mod(torch.tensor(b), torch.tensor(0), q, k)
        for i in range(nb):
            rows = slice(i * BLOCK, (i + 1) * BLOCK)
            for j in bm.full_kv_indices[b, 0, i, : bm.full_kv_num_blocks[b, 0, i]].tolist():
                out[b, rows, j * BLOCK : (j + 1) * BLOCK] = True
            for j in bm.kv_indices[b, 0, i, : bm.kv_num_blocks[b, 0, i]].tolist():
                cols = slice(j * BLOCK, (j + 1) * BLOCK)
                out[b, rows, cols] = elem[rows, cols]
    return out


def test_document_ids_start_at_eot():
    tokens = torch.tensor([[5, 9, 1, 2, 9, 9, 3]])
    assert document_ids(tokens, 9).tolist() == [[0, 1, 1, 1, 2, 3, 3]]


@pytest.mark.parametrize("window", [0, 5, 16, 40])
def test_dense_mask_matches_definition(window):
    tokens = random_tokens(2, 48, eot=50, p=0.08, seed=window)
    docs = document_ids(tokens, 50)
    assert torch.equal(dense_mask(docs, window)[:, 0], reference_mask(tokens, 50, window))


@pytest.mark.parametrize("window", [0, 1, 100, 128, 200, 256, 300, 1000])
@pytest.mark.parametrize("doc_rate", [0.0, 0.002, 0.01, 0.05])
def test_block_mask_encodes_exactly_the_dense_rule(window, doc_rate):
    T = 4 * BLOCK
    tokens = random_tokens(2, T, eot=777, p=doc_rate, seed=int(1000 * doc_rate) + window)
    docs = document_ids(tokens, 777)
    bm = flex_block_mask(docs, torch.tensor(window))
    assert torch.equal(effective_block_mask(bm, T), dense_mask(docs, window)[:, 0])


def test_block_mask_is_sparse_where_it_can_be():
    """One document, no window: the diagonal blocks are partial, everything below is full."""
    T = 4 * BLOCK
    bm = flex_block_mask(torch.zeros(1, T, dtype=torch.long), 0)
    assert bm.kv_num_blocks[0, 0].tolist() == [1, 1, 1, 1]
    assert bm.full_kv_num_blocks[0, 0].tolist() == [0, 1, 2, 3]
    # a window of one block: at most the diagonal and the previous block are touched
    bm = flex_block_mask(torch.zeros(1, T, dtype=torch.long), BLOCK)
    assert (bm.kv_num_blocks + bm.full_kv_num_blocks).max() <= 2


def test_block_mask_needs_block_multiple():
    with pytest.raises(ValueError, match="multiple of 128"):
        flex_block_mask(torch.zeros(1, 200, dtype=torch.long), 0)


@pytest.mark.parametrize("window", [0, 128, 256, 384, 896])
@pytest.mark.parametrize("doc_rate", [0.0, 0.01])
def test_block_granular_window_matches_its_definition_and_the_block_mask(window, doc_rate):
    """model.window_blocks: q sees k when causal, same document and (q//128) - (k//128) < window//128;
    the flex block mask encodes exactly that (partial blocks evaluate only causal + document)."""
    T = 8 * BLOCK
    tokens = random_tokens(2, T, eot=777, p=doc_rate, seed=window + 1)
    docs = document_ids(tokens, 777)
    dense = dense_mask(docs, window, window_blocks=True)[:, 0]
    pos = torch.arange(T)
    in_window = (pos[:, None] // BLOCK - pos[None, :] // BLOCK < window // BLOCK) if window else True
    assert torch.equal(dense, reference_mask(tokens, 777, 0) & in_window)
    bm = flex_block_mask(docs, torch.tensor(window), window_blocks=True)
    assert torch.equal(effective_block_mask(bm, T), dense)


def test_block_granular_window_touches_no_more_blocks_than_the_record():
    """The record's 1,792-token window touches 14 key blocks per query block (7 for the 'S' blocks'
    896); the exact per-token window touches one partial block more."""
    T = 32 * BLOCK
    docs = torch.zeros(1, T, dtype=torch.long)
    for window, blocks in ((1792, 14), (896, 7)):
        by_block = flex_block_mask(docs, window, window_blocks=True)
        by_token = flex_block_mask(docs, window)
        touched = lambda bm: (bm.kv_num_blocks + bm.full_kv_num_blocks).max().item()  # noqa: E731
        assert touched(by_block) == blocks and touched(by_token) == blocks + 1


@pytest.mark.parametrize("window", [1, 64, 127])
def test_block_granular_window_below_one_block_keeps_the_diagonal_block(window):
    """The window warm-up starts at 128 tokens, so the 'S' blocks get 64: under model.window_blocks that
    is still the query's own block (as the record's mask keeps it), never an empty row, which
    FlexAttention would turn into a zero output without a warning."""
    T = 4 * BLOCK
    tokens = random_tokens(2, T, eot=777, p=0.01, seed=window)
    docs = document_ids(tokens, 777)
    dense = dense_mask(docs, window, window_blocks=True)[:, 0]
    pos = torch.arange(T)
    same_block = pos[:, None] // BLOCK == pos[None, :] // BLOCK
    assert torch.equal(dense, reference_mask(tokens, 777, 0) & same_block)
    assert dense.any(dim=-1).all()  # every query sees at least itself
    bm = flex_block_mask(docs, torch.tensor(window), window_blocks=True)
    assert torch.equal(effective_block_mask(bm, T), dense)


def test_compiled_block_lists_equal_the_eager_ones():
    """On CUDA the block index tensors come from one compiled function (host overhead): the same tensors as
    the eager code, here compiled with inductor on CPU, for windows that grow as the warm-up grows them
    (a tensor: no recompile) and documents of any length."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    T = 8 * BLOCK
    for window_blocks in (True, False):
        for i, window in enumerate((128, 256, 640, 0)):
            docs = document_ids(random_tokens(2, T, eot=777, p=0.004 * (i + 1), seed=i), 777)
            compiled = flex_block_mask(docs, torch.tensor(window), window_blocks, compiled=True)
            for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
                assert torch.equal(getattr(compiled, name), getattr(flex_block_mask(docs, window, window_blocks), name))
    assert counters["stats"]["unique_graphs"] - before == 2  # one graph per window_blocks value, none per window
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_compiled_block_lists_equal_the_eager_ones():
    T = 16 * BLOCK
    for window_blocks in (True, False):
        for window in (128, 896, 1792):
            docs = document_ids(random_tokens(1, T, eot=777, p=0.002, seed=window), 777).cuda()
            on_gpu = flex_block_mask(docs, torch.tensor(window, device="cuda"), window_blocks)
            eager = flex_block_mask(docs.cpu(), window, window_blocks, compiled=False)
            for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
                assert torch.equal(getattr(on_gpu, name).cpu(), getattr(eager, name))
