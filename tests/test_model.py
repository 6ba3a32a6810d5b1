"""The GPT: shapes, causality, document masking, windows, FlexAttention vs the fallback, roles."""

import dataclasses
import math
import warnings

import pytest
import torch

from model import GPT, ROLES, flops_per_token
from model.config import ModelConfig
from model.rotary import Rotary

EOT = 255
CFG = ModelConfig(
    vocab_size=256, width=64, depth=4, heads=2, head_dim=32, seq_len=256, eot_token=EOT, value_embeds=1,
    skip_connections=True, x0_mix=True, logit_softcap=15.0, attn_scale=0.12, rope_base=1024.0, rope_fraction=0.5,
    no_attention_layers=(2,), window=0, window_pattern="LSSL", attention="sdpa",
)


def randomized(cfg=CFG, seed=0):
    """A model whose zero-initialized projections are made non-zero, so every path carries signal."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.1)
            else:
                p.uniform_(0.5, 1.5)
    return model.eval()


def tokens(B=2, T=256, seed=0, eot_every=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, EOT, (B, T), generator=g)
    if eot_every:
        x[:, ::eot_every] = EOT
    return x


def test_shapes_and_initial_loss():
    model = GPT(CFG)
    x = tokens()
    logits = model(x)
    assert logits.shape == (2, 256, CFG.padded_vocab) and logits.dtype == torch.float32
    loss = model(x, tokens(seed=1))
    # the head is zero-initialized: uniform prediction over the padded vocabulary
    assert loss.item() == pytest.approx(math.log(CFG.padded_vocab), abs=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vocab_is_padded_to_multiple_of_128():
    cfg = dataclasses.replace(CFG, vocab_size=50257, eot_token=50256)
    assert cfg.padded_vocab == 50304
    assert GPT(dataclasses.replace(cfg, width=32, heads=1)).head.weight.shape == (50304, 32)


def test_softcap_bounds_logits():
    model = randomized()
    with torch.no_grad():
        model.head.weight.mul_(100)
        logits = model(tokens())
    assert logits.abs().max() <= CFG.logit_softcap + 1e-4


@torch.no_grad()
def test_causal_no_position_sees_a_later_token():
    model = randomized()
    x = tokens()
    base = model(x)
    for t in [0, 17, 128, 255]:
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % EOT
        out = model(y)
        assert torch.equal(out[:, :t], base[:, :t]), f"changing token {t} changed an earlier position"
        assert not torch.allclose(out[:, t:], base[:, t:])


@torch.no_grad()
def test_no_position_sees_another_document():
    model = randomized()
    x = tokens()
    x[:, 100] = EOT  # documents [0, 100) and [100, 256)
    base = model(x)
    y = x.clone()
    y[:, :100] = torch.randint(0, EOT, (2, 100))  # rewrite the whole first document
    out = model(y)
    torch.testing.assert_close(out[:, 100:], base[:, 100:], rtol=0, atol=1e-5)
    assert not torch.allclose(out[:, :100], base[:, :100])


@torch.no_grad()
def test_sliding_window_limits_the_receptive_field():
    """One attention block, window 32: position t depends on tokens (t-32, t] only."""
    cfg = dataclasses.replace(CFG, depth=1, no_attention_layers=(), window_pattern="", value_embeds=0,
                              skip_connections=False)
    model = randomized(cfg)
    x = tokens()
    base = model(x, window=32)
    y = x.clone()
    y[:, 50] = (y[:, 50] + 1) % EOT
    out = model(y, window=32)
    assert torch.equal(out[:, :50], base[:, :50])
    assert not torch.allclose(out[:, 50:82], base[:, 50:82])
    torch.testing.assert_close(out[:, 82:], base[:, 82:], rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("window", [0, 128, 200])
def test_flex_attention_agrees_with_fallback(window):
    """FlexAttention (eager on CPU: forward only) computes the same function as SDPA + dense mask."""
    model = randomized()
    x = tokens(eot_every=37)
    ref = model(x, window=window)
    model.cfg = dataclasses.replace(CFG, attention="flex")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(x, window=window)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_param_roles_are_declared_not_guessed():
    model = GPT(CFG)
    roles = model.param_roles()
    assert set(roles) == {n for n, _ in model.named_parameters()}
    assert set(roles.values()) <= set(ROLES)
    assert roles["embed.weight"] == "embed" and roles["head.weight"] == "head"
    assert roles["value_embeds.tables.0.weight"] == "embed"  # 2-D, yet not a hidden matrix
    assert roles["blocks.0.attn.qkv_w"] == "hidden"  # 3-D merged QKV
    assert roles["blocks.0.mlp.fc.weight"] == roles["blocks.3.attn.proj.weight"] == "hidden"
    assert roles["skip_weights"] == roles["blocks.1.lambdas"] == roles["blocks.0.attn.lambdas"] == "scalar"
    assert "blocks.2.attn.qkv_w" not in roles  # block 2 has no attention
    groups = model.params_by_role()
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_undeclared_parameter_is_an_error():
    model = GPT(CFG)
    model.blocks[0].mlp.extra = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(RuntimeError, match="undeclared.*blocks.0.mlp.extra"):
        model.param_roles()


def test_zero_initialized_output_projections():
    model = GPT(CFG)
    for i, block in enumerate(model.blocks):
        assert block.mlp.proj.weight.abs().max() == 0
        if block.attn is not None:
            assert block.attn.proj.weight.abs().max() == 0
    assert model.head.weight.abs().max() == 0


def test_rotary_depends_on_relative_position_only():
    rot = Rotary(32, 64, base=1024.0, fraction=0.5)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(m, n):
        qs = rot(q.expand(1, 64, 1, 32).contiguous())[0, m, 0]
        ks = rot(k.expand(1, 64, 1, 32).contiguous())[0, n, 0]
        return (qs * ks).sum()

    torch.testing.assert_close(score(10, 3), score(40, 33))
    torch.testing.assert_close(score(5, 5), (q * k).sum())
    # half-truncated: the second half of the pairs is not rotated
    x = torch.randn(1, 8, 1, 32)
    y = rot(x)
    torch.testing.assert_close(y[..., 8:16], x[..., 8:16])
    torch.testing.assert_close(y[..., 24:], x[..., 24:])


def test_flops_per_token_is_about_6n_for_short_context():
    cfg = ModelConfig()  # 124M-class shape
    n = 12 * (8 * 768 * 768 + 4 * 768 * 768) + 50304 * 768
    f = flops_per_token(cfg, seq_len=1024)
    assert 6 * n < f < 6 * n * 1.2


def test_flops_of_a_block_window_count_the_keys_its_mask_allows():
    """model.window_blocks: the attention FLOPs follow the block-granular key count, checked against
    the dense mask itself (one document, so the window alone limits the keys)."""
    from model.masks import dense_mask

    cfg = dataclasses.replace(ModelConfig(), window_pattern="", window_blocks=True, no_attention_layers=())
    T, window = 2048, 1792
    keys = dense_mask(torch.zeros(1, T, dtype=torch.long), window, window_blocks=True).sum().item() / T
    attention = flops_per_token(cfg, T, window) - flops_per_token(cfg, T, 128)
    per_key = 12 * cfg.heads * cfg.head_dim * cfg.depth
    keys_128 = dense_mask(torch.zeros(1, T, dtype=torch.long), 128, window_blocks=True).sum().item() / T
    assert attention == pytest.approx(per_key * (keys - keys_128))
    exact = dataclasses.replace(cfg, window_blocks=False)
    assert flops_per_token(cfg, T, window) < flops_per_token(exact, T, window)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_flex_bf16_agrees_with_fp32_fallback():
    cfg = dataclasses.replace(CFG, seq_len=1024)
    model = randomized(cfg).cuda()
    x = tokens(T=1024, eot_every=300).cuda()
    with torch.no_grad():
        ref = model(x, window=384)
        model.cfg = dataclasses.replace(cfg, attention="flex")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, window=384)
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.1)


def test_flops_count_the_diagonal_block_of_a_short_window():
    """'S' blocks at the warm-up's first window (128 // 2 = 64 tokens) attend within their own block under
    model.window_blocks: their keys are counted as such, never as a negative number."""
    cfg = dataclasses.replace(CFG, window=256, window_pattern="S" * CFG.depth, window_blocks=True)
    T = 4 * 128
    per_key = 12 * cfg.heads * cfg.head_dim * (cfg.depth - len(cfg.no_attention_layers))
    full = (torch.arange(T) + 1).double().mean().item()  # keys per query, full causal attention
    diagonal = (torch.arange(T) % 128 + 1).double().mean().item()  # keys of a query inside its own block
    matmuls = flops_per_token(cfg, T, 0) - per_key * full
    assert flops_per_token(cfg, T, 128) == pytest.approx(matmuls + per_key * diagonal)
