"""model/lipschitz.py: the bound is an upper bound (finite differences, autograd Jacobian-vector products
and an adversarial search never exceed it) and it refuses the architectures its proof does not cover.

The norm throughout (the bound's): ‖X‖ = max over tokens t of RMS(x_t), for the input embedding x0
(RMS over the width) and for the logits (RMS over the real vocabulary: the padded rows name no token);
inputs are sequences whose rows have RMS <= R, the largest RMS of an embedding row.
"""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.errors import ConfigError
from model.gpt import GPT
from model.lipschitz import LipschitzNotCovered, attention_bound, lipschitz_bound, uncovered
from model.mlp import activation
from optimizers.constraints import ConstraintState, apply_constraint
from training.config import load_config, validate
from training.constrain import row_rms_cap_

LIPSCHITZ = [  # the switches of configs/lipschitz_smoke.toml, at toy size
    "--model.layer_norm=false", "--model.qk_norm=false", "--model.activation=gelu_scaled",
    "--model.value_embeds=0", "--model.skip_connections=false", "--model.x0_mix=false",
    "--model.logit_softcap=0", "--model.attn_scale=0", "--model.attn_scale_rule=inv_d",
    "--model.attn_out_scale=0.3333333333333333", "--model.residual=convex",
]
TOY = ["--model.width=32", "--model.depth=2", "--model.heads=2", "--model.head_dim=16", "--model.vocab_size=40",
       "--model.vocab_multiple=8", "--model.eot_token=0", "--model.seq_len=8", "--model.window=0",
       "--model.window_pattern=", "--model.doc_masking=false", "--model.dtype=float64", "--model.rope_fraction=1.0"]


def toy_model(*overrides, beta=2.0, seed=0):
    """A toy Lipschitz GPT in float64 with random matrices, each spectrally normalized to sigma_max <= beta
    (the head too) and the embedding's rows capped at RMS 1: a small constrained model."""
    cfg = load_config("configs/smoke.toml", [*LIPSCHITZ, *TOY, *overrides])
    validate(cfg)
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    roles = model.params_by_role()
    with torch.no_grad():
        for p in roles["hidden"] + roles["head"]:
            p.normal_()
        for role in ("hidden", "head"):
            apply_constraint("spectral_normalize", roles[role], beta, ConstraintState())
        row_rms_cap_(model.embed.weight, 1.0)
    return model


def logits_of(model):
    """f: x0 (B, T, width) -> logits (B, T, V), the map the bound is about (no document masks here)."""
    idx = torch.zeros(1, model.cfg.seq_len, dtype=torch.long)

    def f(x0):
        return model.head(model.head_norm(model.trunk(x0, idx.expand(x0.size(0), -1))))

    return f


def jvp(f, x, v):
    """f(x) and J(x) v by reverse-mode autograd: J v = d/du <Jᵀu, v> (a double backward; forward-mode AD
    would first spend ~13 s loading torch's JIT decompositions). SDPA's math kernel differentiates twice."""
    x = x.detach().requires_grad_()
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        y = f(x)
        u = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, x, u, create_graph=True)
        (jv,) = torch.autograd.grad(g, u, v)
    return y.detach(), jv


def norm(Z):
    """max over tokens of the RMS over the last dim, per sequence of the batch."""
    return Z.square().mean(-1).sqrt().amax(-1)


def in_domain(Z, radius):
    """Rows scaled down to RMS <= radius (the ball the bound holds on)."""
    rms = Z.square().mean(-1, keepdim=True).sqrt()
    return Z * (radius / rms.clamp_min(1e-30)).clamp(max=1.0)


def random_inputs(n, model, radius, gen):
    """n sequences whose rows have RMS uniform in [0, radius] (half of them exactly radius: the boundary)."""
    T, d = model.cfg.seq_len, model.cfg.width
    Z = torch.randn(n, T, d, generator=gen, dtype=torch.float64)
    Z = Z / Z.square().mean(-1, keepdim=True).sqrt()
    r = torch.rand(n, T, 1, generator=gen, dtype=torch.float64)
    r[: n // 2] = 1.0
    return Z * r * radius


def secant(f, x, v, radius, eps=1e-4):
    """‖f(y) − f(x)‖ / ‖y − x‖ on the last token's output, y = x + eps·v pulled into the domain: an exact
    lower bound of the Lipschitz constant (no linearization), differentiable in x and v."""
    x = in_domain(x, radius)
    y = in_domain(x + eps * v, radius)
    return (f(y) - f(x))[:, -1].square().mean(-1).sqrt() / norm(y - x)


def adversarial_ratio(f, shape, radius, starts=2, steps=60):
    """The largest secant ratio found by gradient ascent over x in the domain and directions v with every
    row of the same size (the norm's extreme points), from a few random starts."""
    gen = torch.Generator().manual_seed(1)
    best = 0.0
    for _ in range(starts):
        z = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
        u = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
        opt = torch.optim.Adam([z, u], lr=0.05)
        for _ in range(steps):
            v = u / u.square().mean(-1, keepdim=True).sqrt()
            ratio = secant(f, z, v, radius).sum()
            opt.zero_grad()
            (-ratio).backward()
            opt.step()
            best = max(best, ratio.item())
    return best


@pytest.mark.parametrize("overrides, beta", [((), 2.0), (("--model.residual=add",), 0.7),
                                              (("--model.logit_softcap=5",), 2.0)], ids=["convex", "add", "softcap"])
def test_the_bound_is_never_exceeded(overrides, beta):
    """Random pairs (far apart and close together), Jacobian-vector products (forward-mode autograd) in
    random directions and an adversarial search: every ratio ‖f(X) − f(Y)‖ / ‖X − Y‖ stays below the bound."""
    model = toy_model(*overrides, beta=beta)
    b = lipschitz_bound(model)
    assert b.radius == pytest.approx(1.0, abs=1e-12)  # the rows were capped at RMS 1 (N(0,1) rows exceed it)
    f, gen = logits_of(model), torch.Generator().manual_seed(0)
    with torch.no_grad():
        X, Y = random_inputs(256, model, b.radius, gen), random_inputs(256, model, b.radius, gen)
        far = norm(f(X) - f(Y)) / norm(X - Y)
        near = secant(f, X, random_inputs(256, model, 1.0, gen), b.radius)
    V = random_inputs(16, model, 1.0, gen)
    _, JV = jvp(f, X[:16], V)
    directions = norm(JV) / norm(V)
    worst = max(far.max().item(), near.max().item(), directions.max().item())
    assert worst <= b.bound, (worst, b.bound)
    if not overrides:  # the adversarial search (the slow part) on the Lipschitz transformer itself
        adversarial = adversarial_ratio(f, (1, model.cfg.seq_len, model.cfg.width), b.radius)
        assert directions.max().item() <= adversarial <= b.bound, (adversarial, b.bound)  # it finds more


def test_the_bound_is_exact_where_the_model_is_linear():
    """With residual branches of weight ~0 the model is its head: x -> W x token by token, whose Lipschitz
    constant in these norms is exactly sigma_max(W)·sqrt(width / vocab), reached by the top right singular
    vector on every token. The bound must find it (this pins the head's factor and the RMS units)."""
    model = toy_model("--model.residual_scale=1e-9")
    b = lipschitz_bound(model)
    _, _, Vh = torch.linalg.svd(model.head.weight.detach())
    top = Vh[0] * math.sqrt(model.cfg.width)  # RMS 1
    X = torch.zeros(1, model.cfg.seq_len, model.cfg.width, dtype=torch.float64)
    with torch.no_grad():
        ratio = secant(logits_of(model), X, top.expand_as(X), b.radius).item()
    assert ratio == pytest.approx(b.bound, rel=1e-6)


def test_the_attention_bound_holds_for_heads_that_look_at_different_tokens():
    """One attention layer on its own, the worst case searched directly: its secant ratios (max over
    tokens of the Euclidean norm) against attention_bound, at inputs of Euclidean norm <= A per token."""
    model = toy_model(beta=3.0)
    attn, d = model.blocks[0].attn, model.cfg.width
    A = math.sqrt(d)  # Euclidean norm per token; RMS 1
    lip, growth, _ = attention_bound(attn, A)

    def f(x):
        out = attn(x, "sdpa", None)
        assert out.norm(dim=-1).max() <= growth * A * (1 + 1e-12)
        return out * math.sqrt(d / out.size(-1))  # RMS in and out: the secant's ratio is then Euclidean's

    best = adversarial_ratio(f, (1, 8, d), 1.0)
    assert 0.01 * lip < best <= lip, (best, lip)


@pytest.mark.parametrize("override, key", [
    ("--model.layer_norm=true", "model.layer_norm"), ("--model.qk_norm=true", "model.qk_norm"),
    ("--model.activation=relu2", "model.activation"), ("--model.bias=true", "model.bias"),
    ("--model.value_embeds=1", "model.value_embeds"), ("--model.skip_connections=true", "model.skip_connections"),
    ("--model.x0_mix=true", "model.x0_mix"), ("--model.fp8_head=true", "model.fp8_head"),
])
def test_uncovered_architectures_are_refused_by_name(override, key):
    model = toy_model(override)
    with pytest.raises(LipschitzNotCovered, match=key):
        lipschitz_bound(model)
    cfg = load_config("configs/smoke.toml", [*LIPSCHITZ, *TOY, override, "--constraint.log_bound=always"])
    with pytest.raises(ConfigError, match=f"constraint.log_bound.*{key}"):
        validate(cfg)


def test_the_speedrun_model_is_not_covered_and_the_lipschitz_configs_are():
    assert uncovered(load_config("configs/smoke.toml").model)
    assert uncovered(load_config("configs/speedrun_124m.toml").model)
    for name in ("lipschitz_smoke", "lipschitz_shakespeare"):
        assert uncovered(load_config(f"configs/{name}.toml").model) == []


def test_gelu_scaled_is_one_lipschitz_and_reaches_slope_one():
    """The activation's constant is part of the proof: its largest slope, on a fine grid, is 1."""
    x = torch.linspace(-8, 8, 160001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(activation(x, "gelu_scaled").sum(), x)
    assert slope.abs().max().item() <= 1 + 1e-12
    assert slope.max().item() >= 1 - 1e-8
    assert activation(torch.zeros(1, dtype=torch.float64), "gelu_scaled").item() == 0


def test_the_bound_matches_a_plain_recomputation():
    """The bound from its formula, recomputed here from full SVDs of the weights (the reference)."""
    model = toy_model()
    cfg, b = model.cfg, lipschitz_bound(model)
    sig = lambda W: torch.linalg.svdvals(W.detach())[..., 0]  # noqa: E731
    R = model.embed.weight[: cfg.vocab_size].detach().square().mean(-1).sqrt().max().item()
    A, L, a = math.sqrt(cfg.width) * R, 1.0, 1 / (2 * cfg.depth)
    for block in model.blocks:
        at = block.attn
        q, k, v = (sig(w.view(cfg.heads, cfg.head_dim, cfg.width)) for w in at.qkv_w)
        heads = v * (1 + 2 * at.scale * q * k * A**2)
        s_o = sig(at.proj.weight)
        L *= (1 - a) + a * (s_o * heads.norm() / 3).item()
        A *= (1 - a) + a * (s_o * v.norm() / 3).item()
        m = (sig(block.mlp.proj.weight) * sig(block.mlp.fc.weight)).item()
        L *= (1 - a) + a * m
        A *= (1 - a) + a * m
    L *= sig(model.head.weight[: cfg.vocab_size]).item() * math.sqrt(cfg.width / cfg.vocab_size)
    assert b.bound == pytest.approx(L, rel=1e-10)
    assert b.log10 == pytest.approx(math.log10(L), rel=1e-10)
    assert set(b.metrics()) >= {"lipschitz_bound", "log10_lipschitz_bound", "sigma.b0.q", "sigma.b1.fc", "sigma.head"}


def test_the_bound_is_over_the_real_vocabulary_and_ignores_the_padded_rows():
    """Vocabulary 37 padded to 40: the bound measures the 37 real logits (RMS over 37) with the real rows' σ.
    Large padded rows change nothing; the secant ratio of the real logits stays below it, and where the model
    is linear reaches it. (Over the padded 40 rows the former bound was √(40/37) smaller for these logits.)"""
    model = toy_model("--model.vocab_size=37", "--model.residual_scale=1e-9")
    b = lipschitz_bound(model)
    with torch.no_grad():
        model.head.weight[37:] = 100.0
    assert lipschitz_bound(model).bound == b.bound
    W = model.head.weight.detach()[:37]
    _, _, Vh = torch.linalg.svd(W)
    top = Vh[0] * math.sqrt(model.cfg.width)
    X = torch.zeros(1, model.cfg.seq_len, model.cfg.width, dtype=torch.float64)
    real = lambda x: logits_of(model)(x)[..., :37]  # noqa: E731
    with torch.no_grad():
        ratio = secant(real, X, top.expand_as(X), b.radius).item()
    assert ratio == pytest.approx(b.bound, rel=1e-6)


def test_a_negative_attention_scale_counts_by_its_size():
    """The scale enters the Jacobian through its size: flipping its sign must not shrink the bound (it did:
    c·σ_q·σ_k with c < 0 lowered the attention factor below σ_v). Config validation refuses a negative scale,
    so this sets it on the module, as a checkpoint edited by hand could."""
    model = toy_model(beta=3.0)
    b = lipschitz_bound(model).bound
    for block in model.blocks:
        block.attn.scale = -block.attn.scale
    assert lipschitz_bound(model).bound == pytest.approx(b, rel=1e-12)


def test_the_reference_formula_is_reported_beside_the_bound():
    model = toy_model()
    b = lipschitz_bound(model)
    assert b.reference is not None and b.reference > 0
    assert b.metrics()["lipschitz_reference"] == b.reference


def test_the_reference_formula_follows_the_reference_code():
    """phess2/lipschitz-transformers utils.calculate_lipschitz_constant, written out here from the weights'
    RMS->RMS norms (its weight_norm logs): softmax_scale 1 for our 1/head_dim logits."""
    from model.lipschitz import reference_formula

    model = toy_model()
    cfg = model.cfg
    assert model.blocks[0].attn.scale == pytest.approx(1 / cfg.head_dim)  # the thesis's rule, softmax_scale 1
    for p in model.parameters():  # the output projections start at zero: give them weight
        if p.ndim >= 2 and not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)

    def norm(W):  # RMS->RMS: sqrt(fan_in / fan_out) sigma_max
        W = W.detach().double()
        return math.sqrt(W.size(-1) / W.size(-2)) * torch.linalg.matrix_norm(W, ord=2).item()

    alpha, act = 1 / (2 * cfg.depth), [1.0]
    layers = []
    for block in model.blocks:
        q, k, v = (norm(w) for w in block.attn.qkv_w)
        w, m_in, m_out = norm(block.attn.proj.weight), norm(block.mlp.fc.weight), norm(block.mlp.proj.weight)
        layers.append((q, k, v, w, m_in, m_out))
        act.append((1 - alpha) * act[-1] + alpha * (1 / 3 * w * v) * act[-1])
        act.append((1 - alpha) * act[-1] + alpha * (m_out * m_in / 1.1289) * act[-1])
    embed = model.embed.weight.detach().double()[: cfg.vocab_size]
    L = embed.square().mean(-1).sqrt().max().item()  # its Embed weight_norm: the largest column RMS
    for i, (q, k, v, w, m_in, m_out) in enumerate(layers):
        L_att = 1 / 3 * w * (v + 2 * v * act[2 * i] ** 2 * q * k) * 1.0
        L = (1 - alpha) * L + alpha * L * L_att
        L = (1 - alpha) * L + alpha * L * (m_out * m_in / 1.1289)
    L *= norm(model.head.weight.detach()[: cfg.vocab_size])
    assert reference_formula(model) == pytest.approx(L, rel=1e-9)
