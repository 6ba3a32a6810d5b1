"""The optimization benchmark's plain GPT (track 3: configs/track3_*.toml) as switches of our model:
its size, where its biases and gains are, its init, its cap, its parameter roles and optimizer
settings, the functions it computes (float64), and the tiny config training on CPU."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import train_gpt
from common.errors import ConfigError
from model import GPT
from model.config import ModelConfig
from model.loss import softcap
from optimizers import build_optimizer
from optimizers.muon import Muon
from training.config import load_config, validate
from training.run_dir import read_metrics

REPO = Path(__file__).resolve().parents[1]
TRACK3 = load_config(REPO / "configs/track3_muon.toml")
SMALL = dataclasses.replace(TRACK3.model, vocab_size=256, eot_token=255, width=64, depth=2, heads=2, head_dim=32,
                            seq_len=64)


def reference_parameter_count(m: ModelConfig) -> int:
    """train_gpt_simple.py's model from its architecture: embedding and untied head (with a bias) over
    the padded vocabulary, an RMSNorm gain after the embedding and before the head, and per block
    separate q, k, v and output projections and the MLP's two layers (each a weight and a bias) and
    two RMSNorm gains."""
    d, inner, hidden, vocab = m.width, m.heads * m.head_dim, m.mlp_ratio * m.width, m.padded_vocab
    linear = lambda d_in, d_out: d_in * d_out + d_out  # noqa: E731
    block = 3 * linear(d, inner) + linear(inner, d) + linear(d, hidden) + linear(hidden, d) + 2 * d
    return vocab * d + d + m.depth * block + d + linear(d, vocab)


def test_parameter_count_is_the_reference_architecture():
    with torch.device("meta"):
        model = GPT(TRACK3.model)
    ours = sum(p.numel() for p in model.parameters())
    assert ours == reference_parameter_count(TRACK3.model)
    assert TRACK3.model.padded_vocab == 50304 and TRACK3.model.heads * TRACK3.model.head_dim == TRACK3.model.width


def test_biases_and_gains_are_where_the_reference_has_them():
    model = GPT(SMALL)
    params = dict(model.named_parameters())
    inner, hidden = SMALL.heads * SMALL.head_dim, SMALL.mlp_ratio * SMALL.width
    expected = {"embed.weight": (SMALL.padded_vocab, SMALL.width), "embed_norm.gain": (SMALL.width,),
                "head_norm.gain": (SMALL.width,), "head.weight": (SMALL.padded_vocab, SMALL.width),
                "head.bias": (SMALL.padded_vocab,)}
    for i in range(SMALL.depth):
        expected.update({
            f"blocks.{i}.attn.qkv_w": (3, inner, SMALL.width), f"blocks.{i}.attn.qkv_b": (3 * inner,),
            f"blocks.{i}.attn.proj.weight": (SMALL.width, inner), f"blocks.{i}.attn.proj.bias": (SMALL.width,),
            f"blocks.{i}.mlp.fc.weight": (hidden, SMALL.width), f"blocks.{i}.mlp.fc.bias": (hidden,),
            f"blocks.{i}.mlp.proj.weight": (SMALL.width, hidden), f"blocks.{i}.mlp.proj.bias": (SMALL.width,),
            f"blocks.{i}.norm1.gain": (SMALL.width,), f"blocks.{i}.norm2.gain": (SMALL.width,),
        })
    assert {name: tuple(p.shape) for name, p in params.items()} == expected  # nothing else (QK-norm: no gain)
    # the speedrun's switches: no bias, no gain
    speed = GPT(dataclasses.replace(SMALL, bias=False, norm_gains=False))
    assert not any(n.endswith(("bias", "gain")) for n, _ in speed.named_parameters())


@torch.no_grad()
def test_every_bias_and_gain_is_used():
    model = randomized()
    x = tokens()
    base = model(x)
    for name, p in model.named_parameters():
        if name.endswith(("bias", "gain")):
            p.add_(0.5)
            assert not torch.allclose(model(x), base), f"{name} does not change the logits"
            p.sub_(0.5)


@torch.no_grad()
def test_init_statistics():
    cfg = dataclasses.replace(SMALL, width=512, heads=4, head_dim=128, vocab_size=1024, eot_token=1023)
    torch.manual_seed(0)
    model = GPT(cfg)
    std = math.sqrt(0.33 / cfg.width)
    for block in model.blocks:
        for w in (block.attn.qkv_w, block.mlp.fc.weight):  # N(0, 0.33 / fan_in); fan_in = width for both
            assert abs(w.std().item() / std - 1) < 0.01 and abs(w.mean().item()) < 0.01 * std
            assert abs(kurtosis(w) - 3) < 0.05  # normal (a uniform's kurtosis is 1.8)
        for w in (block.attn.proj.weight, block.mlp.proj.weight):
            assert w.abs().max() == 0
    assert model.head.weight.abs().max() == 0
    assert model.embed.weight.dtype == torch.bfloat16  # embed_bf16
    assert abs(model.embed.weight.float().std().item() - 1) < 0.01 and abs(kurtosis(model.embed.weight) - 3) < 0.05
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert p.abs().max() == 0, name
        if name.endswith("gain"):
            assert torch.equal(p, torch.ones_like(p)), name
    # the speedrun's init: uniform with std 0.5 / sqrt(fan_in)
    w = GPT(dataclasses.replace(cfg, hidden_init="uniform")).blocks[0].mlp.fc.weight
    assert abs(w.std().item() / (0.5 / math.sqrt(cfg.width)) - 1) < 0.01 and abs(kurtosis(w) - 1.8) < 0.05


def kurtosis(w: torch.Tensor) -> float:
    z = (w.double() - w.double().mean()) / w.double().std()
    return z.pow(4).mean().item()


@torch.no_grad()
def test_logits_are_capped_algebraically():
    model = randomized()
    model.head.weight.mul_(50)
    x = tokens()
    capped = model(x)
    model.head.cap = 0.0
    z = model(x)
    assert z.abs().max() > 100 and capped.abs().max() < 15
    torch.testing.assert_close(capped, 15 * z / torch.sqrt(z**2 + 15**2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(capped, softcap(z, 15.0, "algebraic"))


def test_roles_and_optimizer_settings_are_the_tuned_baseline():
    model = GPT(SMALL)
    roles = model.param_roles()
    params = dict(model.named_parameters())
    for name, role in roles.items():  # the reference's rule: blocks' matrices -> Muon, every vector -> AdamW
        expected = {"embed.weight": "embed", "head.weight": "head"}.get(name)
        expected = expected or ("hidden" if name.startswith("blocks.") and params[name].ndim >= 2 else "scalar")
        assert role == expected, name
    assert roles["head.bias"] == "scalar"  # 1-D: the reference's 1-D group, not the head's
    opt = build_optimizer(model.params_by_role(), TRACK3.optim, torch.device("cpu"))
    assert isinstance(opt, Muon)
    got = {g["role"]: (g["algorithm"], g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert got == {"embed": ("adamw", 0.7, 0.001), "head": ("adamw", 0.004, 0.001),
                   "scalar": ("adamw", 0.015, 0.001), "hidden": ("muon", 0.025, 0.05)}
    hidden = next(g for g in opt.param_groups if g["role"] == "hidden")
    assert (hidden["momentum"], hidden["nesterov"], hidden["orthogonalize"], hidden["ns_steps"], hidden["shape_scale"]) == \
        (0.95, True, "modular_quintic", 12, "muon")
    for g in opt.param_groups:
        assert g["adam_betas"] == (0.8, 0.95) and g["adam_eps"] == 1e-10 / 2**19  # the summed loss's eps, for the mean


def test_q_k_v_are_separate_matrices_for_muon():
    """The merged (3, d_out, d_in) Q/K/V weight takes the updates of three separate matrices, each
    with its own optimizer (gradients of very different sizes: one joint normalization would show)."""
    torch.manual_seed(0)
    merged = torch.nn.Parameter(torch.randn(3, 32, 16, dtype=torch.float64))
    parts = [torch.nn.Parameter(merged.detach()[i].clone()) for i in range(3)]
    merged.grad = torch.randn(3, 32, 16, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    for i, p in enumerate(parts):
        p.grad = merged.grad[i].clone()
    for params in ([merged], *([p] for p in parts)):
        Muon(params, lr=0.1, weight_decay=0.05, orthogonalize="modular_quintic", ns_steps=12).step()
    torch.testing.assert_close(merged.detach(), torch.stack([p.detach() for p in parts]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("overrides,key", [
    (["--model.softcap_kind=cubic"], "model.softcap_kind"),
    (["--model.logit_softcap=0"], "model.softcap_kind"),  # an algebraic cap of 0
    (["--model.hidden_init=xavier"], "model.hidden_init"),
    (["--model.loss_chunk=0"], "model.loss_chunk"),
    (["--model.dtype=float64"], "model.embed_bf16"),
])
def test_impossible_model_settings_name_the_key(overrides, key):
    cfg = load_config(REPO / "configs/track3_muon.toml", overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


# ----------------------------------------------------------------------------------------------
# the function the model computes (float64 on CPU): what it may and may not depend on


def randomized(cfg=None, seed=0):
    """A float64 track-3 model whose zero-initialized weights and biases are made non-zero."""
    cfg = cfg or dataclasses.replace(SMALL, dtype="float64", embed_bf16=False, attention="sdpa")
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3) if p.ndim >= 2 else p.uniform_(-0.5, 1.5)
    return model.eval()


def tokens(B=2, T=64, seed=0):
    return torch.randint(0, 255, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_causal_and_nothing_else():
    model = randomized()
    x = tokens()
    x[:, 20] = 255  # an end-of-text token: track 3 attends across it
    base = model(x)
    for t in (0, 10, 30, 63):
        y = x.clone()
        y[0, t] = (y[0, t] + 1) % 255
        out = model(y)
        assert torch.equal(out[0, :t], base[0, :t]), f"changing token {t} changed an earlier logit"
        assert torch.equal(out[1], base[1]), "rows are independent"
        # every later position sees it: no window, no document boundary at the end-of-text token
        assert (out[0, t:] - base[0, t:]).abs().amax(dim=-1).min() > 1e-9
    y = x.clone()
    y[:, [3, 7]] = x[:, [7, 3]]  # order matters
    assert not torch.allclose(model(y)[:, -1], base[:, -1])


@torch.no_grad()
def test_document_masking_is_a_switch():
    """The same weights with doc_masking on: positions after the end-of-text token stop seeing the
    tokens before it."""
    model = randomized()
    x = tokens()
    x[:, 20] = 255
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 255
    assert not torch.allclose(model(y)[:, 20:], model(x)[:, 20:])
    model.cfg = dataclasses.replace(model.cfg, doc_masking=True)
    torch.testing.assert_close(model(y)[:, 20:], model(x)[:, 20:], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_config_trains_and_its_loss_falls(tmp_path):
    """configs/track3_tiny.toml, shortened to 10 steps (the chunked loss runs: 2,048 tokens per forward
    pass, model.loss_chunk 1,024)."""
    code = train_gpt.main(["--config", str(REPO / "configs/track3_tiny.toml"), f"--log.dir={tmp_path}",
                           "--log.run_id=tiny", "--schedule.steps=10", "--eval.every=10", "--eval.every_late=0",
                           "--eval.tokens=2048", "--checkpoint.final=false"])
    assert code == 0
    vals = [r["val_loss"] for r in read_metrics(tmp_path / "tiny") if "val_loss" in r]
    assert vals[0] == pytest.approx(math.log(1024), abs=1e-3)  # zero head and head bias: uniform
    assert vals[-1] < vals[0] - 1.0, vals
