""""Old Optimizer, New Norm" (Bernstein & Newhouse, 2024) as checks against formulas written here, from the
paper and the reference code, not imported from optimizers/: with their moving averages off, Adam is sign
descent, Shampoo is spectral descent, NorMuon's "off" is Keller Jordan's Muon, and Scion's spectral step
has RMS→RMS norm lr·ρ; every norm of optimizers/norms.py has the value and dual the paper gives; each step
is the steepest under its norm (it attains the dual norm, no point of the unit ball does better) and has
the size it should.

What each test catches (mutations of the code that were tried, each failing here):
- test_norms_match_the_formulas: a wrong scale in norms.py, e.g. √(d_in/d_out) for √(d_out/d_in) in
  Spectral._scale (tests/test_norms.py's consistency checks pass with it; only its direction and
  reference-variant cases fail, 4 of 77), a missing √d_in in
  RowNorm, d_out for d_in in SignFanIn / colnorm_normalized.
- test_scion_spectral_step_has_rms_norm_lr_times_radius: the same wrong Spectral scale (the direction is
  still U Vᵀ up to a factor, so a steepest-direction check alone passes); a radius applied twice.
- test_muon_spectral_scale_is_the_rms_duality_map: a wrong "spectral" entry in muon.shape_scale.
- test_normuon_off_is_the_reference_muon: Nesterov's blend reversed (g.lerp(m, 1 − β)), the momentum as a
  sum instead of an average, weight decay applied after the step, the "muon" shape scale inverted;
  NorMuon's "off" path taking another route than Muon's update.
- test_adam_without_averages_is_sign_descent: ε or the bias correction misplaced in the auxiliary AdamW.
- test_shampoo_without_averages_is_the_spectral_step: a preconditioner power other than −1/4 (two-sided)
  or −1/2 (one-sided).
"""

import math

import pytest
import torch

from optimizers import NORMS, Muon
from optimizers.normuon import NorMuon
from optimizers.prodigy import Prodigy
from optimizers.scion import Scion
from optimizers.shampoo import Shampoo

F64 = torch.float64
SHAPES = [(12, 5), (5, 12), (7, 7), (3, 6, 9)]  # tall, wide, square, a batch of three matrices


def params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=F64)) for s in shapes]


def grads_for(ps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=F64) for p in ps]


def steps(opt, ps, n, seed0=100):
    """n steps on fresh random gradients; returns each step's change of every parameter and the gradients."""
    deltas, grads = [], []
    for t in range(n):
        gs = grads_for(ps, seed0 + t)
        before = [p.detach().clone() for p in ps]
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        deltas.append([p.detach() - b for p, b in zip(ps, before)])
        grads.append(gs)
    return deltas, grads


# ---------------------------------------------------------------------------------------------
# The formulas, written here (matrices (..., d_out, d_in); a leading batch: max of norms, sum of duals)


def polar(g):
    """U Vᵀ of every matrix of g, from torch's SVD."""
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    return U @ Vh


def sigma_max(W):
    return torch.linalg.svdvals(W)[..., 0]


def nuclear(W):
    return torch.linalg.svdvals(W).sum(-1)


def dims(W):
    return W.size(-2), W.size(-1)


def reduce(values, dual):
    return values.sum() if dual else values.max()


# name -> (norm(W), dual(G)): the paper's operator norms (Bernstein & Newhouse 2024, Table 1; Large et al.
# 2024) and the reference Scion's normalizations (LIONS-EPFL/scion)
FORMULAS = {
    "spectral": (lambda W: reduce(math.sqrt(dims(W)[1] / dims(W)[0]) * sigma_max(W), False),
                 lambda G: reduce(math.sqrt(dims(G)[0] / dims(G)[1]) * nuclear(G), True)),
    "spectral_max": (lambda W: reduce(sigma_max(W) / max(1.0, math.sqrt(dims(W)[0] / dims(W)[1])), False),
                     lambda G: reduce(max(1.0, math.sqrt(dims(G)[0] / dims(G)[1])) * nuclear(G), True)),
    "sign": (lambda W: W.abs().max(), lambda G: G.abs().sum()),
    "sign_fanin": (lambda W: dims(W)[1] * W.abs().max(), lambda G: G.abs().sum() / dims(G)[1]),
    "colnorm": (lambda W: (W.pow(2).mean(-2).sqrt()).max(), lambda G: math.sqrt(dims(G)[0]) * G.pow(2).sum(-2).sqrt().sum()),
    "colnorm_normalized": (lambda W: dims(W)[1] * W.pow(2).mean(-2).sqrt().max(),
                           lambda G: math.sqrt(dims(G)[0]) / dims(G)[1] * G.pow(2).sum(-2).sqrt().sum()),
    "rownorm": (lambda W: math.sqrt(dims(W)[1]) * W.pow(2).sum(-1).sqrt().max(),
                lambda G: G.pow(2).sum(-1).sqrt().sum() / math.sqrt(dims(G)[1])),
    "rownorm_unnormalized": (lambda W: W.pow(2).sum(-1).sqrt().max(), lambda G: G.pow(2).sum(-1).sqrt().sum()),
}


def test_every_matrix_norm_has_a_formula_here():
    matrix = {n for n, norm in NORMS.items() if norm.matrix_only} | {"sign", "sign_fanin"}
    assert matrix <= set(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_norms_match_the_formulas(name, shape):
    """norm, dual_norm and the direction's size and value, against the formulas above."""
    norm, dual = FORMULAS[name]
    W, G = params([shape, shape], seed=4)
    W, G = W.detach(), G.detach()
    torch.testing.assert_close(NORMS[name].norm(W), norm(W), rtol=1e-12, atol=0)
    torch.testing.assert_close(NORMS[name].dual_norm(G), dual(G), rtol=1e-12, atol=0)
    T = NORMS[name].direction(G, method="svd") if NORMS[name].orthogonalizes else NORMS[name].direction(G)
    torch.testing.assert_close(norm(T), torch.tensor(1.0, dtype=F64), rtol=1e-9, atol=0)
    torch.testing.assert_close((G * T).sum(), dual(G), rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------------------------
# Steepest: a step attains the dual norm of the formulas, and no point of the ball does better


def assert_steepest(g, delta, name, n=300):
    norm, dual = FORMULAS[name]
    unit = delta / norm(delta)
    best = (g * unit).sum()
    torch.testing.assert_close(best, dual(g), rtol=1e-9, atol=0)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        T = torch.randn(g.shape, generator=gen, dtype=F64)
        if i % 3 == 1:  # a vertex-like point: ±1 entries / an orthogonal matrix
            T = torch.sign(T) if name.startswith("sign") else polar(T)
        assert (g * (T / norm(T))).sum() <= best + 1e-12
    nudged = unit + 1e-3 * torch.randn(g.shape, generator=gen, dtype=F64)
    assert (g * (nudged / norm(nudged))).sum() < best


def test_sign_step_of_adam_is_steepest_in_the_max_norm():
    ps = params([(6, 4), (2, 3, 5)])
    opt = torch.optim.AdamW(ps, lr=0.01, betas=(0.0, 0.0), eps=1e-30, weight_decay=0.0)
    ds, gs = steps(opt, ps, 2)
    for d, g in zip(ds[-1], gs[-1]):
        assert_steepest(g, -d, "sign")


def test_prodigy_step_is_steepest_in_the_max_norm():
    ps = params([(6, 4)])
    opt = Prodigy(ps, betas=(0.0, 0.0), beta3=0.0, eps=1e-30)
    ds, gs = steps(opt, ps, 3)
    assert_steepest(gs[-1][0], -ds[-1][0], "sign")


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_shampoo_step_is_steepest_in_the_spectral_norm(shape):
    ps = params([shape])
    opt = Shampoo(ps, lr=0.1, momentum=0.0, factor_beta=0.0, precondition_frequency=1, graft="none")
    ds, gs = steps(opt, ps, 2)
    assert_steepest(gs[-1][0], -ds[-1][0], "spectral")


@pytest.mark.parametrize("norm", ["spectral", "spectral_max", "colnorm", "colnorm_normalized", "rownorm",
                                  "rownorm_unnormalized", "sign", "sign_fanin"])
def test_scion_steps_are_steepest_in_their_norm(norm):
    ps = params([(9, 5)])
    opt = Scion([dict(params=ps, norm=norm, scale=1.0)], lr=0.1, momentum=0.0, constrained=False,
                orthogonalize="svd")
    ds, gs = steps(opt, ps, 2)
    assert_steepest(gs[-1][0], -ds[-1][0], norm)


def test_the_check_catches_a_step_that_is_not_steepest():
    """The dual-norm check itself can fail: Adam with its averages on is not the sign step."""
    ps = params([(6, 4)])
    opt = torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    ds, gs = steps(opt, ps, 3)
    with pytest.raises(AssertionError):
        assert_steepest(gs[-1][0], -ds[-1][0], "sign")


# ---------------------------------------------------------------------------------------------
# Sizes and equivalences: full steps against the formulas


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_scion_spectral_step_has_rms_norm_lr_times_radius(shape):
    """uSCG's step with the spectral LMO is −γρ·√(d_out/d_in)·U Vᵀ: RMS→RMS norm exactly γρ."""
    ps = params([shape])
    opt = Scion([dict(params=ps, norm="spectral", scale=3.0)], lr=0.1, momentum=0.0, constrained=False,
                orthogonalize="svd")
    ds, gs = steps(opt, ps, 2)
    d, g = ds[-1][0], gs[-1][0]
    d_out, d_in = dims(g)
    torch.testing.assert_close(d, -0.1 * 3.0 * math.sqrt(d_out / d_in) * polar(g), rtol=0, atol=1e-12)
    torch.testing.assert_close(FORMULAS["spectral"][0](d), torch.tensor(0.3, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_muon_spectral_scale_is_the_rms_duality_map(shape):
    """Muon with momentum 0 and shape_scale "spectral": −lr·√(d_out/d_in)·U Vᵀ, RMS→RMS norm lr."""
    ps = params([shape])
    opt = Muon(ps, lr=0.1, momentum=0.0, nesterov=False, orthogonalize="svd", shape_scale="spectral")
    ds, gs = steps(opt, ps, 2)
    d, g = ds[-1][0], gs[-1][0]
    torch.testing.assert_close(d, -0.1 * math.sqrt(dims(g)[0] / dims(g)[1]) * polar(g), rtol=0, atol=1e-12)
    torch.testing.assert_close(FORMULAS["spectral"][0](d), torch.tensor(0.1, dtype=F64), rtol=1e-12, atol=0)


def test_adam_without_averages_is_sign_descent():
    """β1 = β2 = 0, ε → 0: Adam's step is −lr·sign(g), for torch's AdamW and Muon's auxiliary AdamW."""
    shapes = [(6, 4), (9,), (2, 3, 5)]
    torch_adam, muon_adam = params(shapes), params(shapes)
    a = torch.optim.AdamW(torch_adam, lr=0.01, betas=(0.0, 0.0), eps=1e-30, weight_decay=0.0)
    b = Muon([{"params": muon_adam, "algorithm": "adamw"}], lr=0.01, adam_betas=(0.0, 0.0), adam_eps=1e-30)
    da, gs = steps(a, torch_adam, 4)
    db, _ = steps(b, muon_adam, 4)
    for t in range(4):
        for x, y, g in zip(da[t], db[t], gs[t]):
            torch.testing.assert_close(x, -0.01 * torch.sign(g), rtol=0, atol=1e-15)
            torch.testing.assert_close(y, -0.01 * torch.sign(g), rtol=0, atol=1e-15)


@pytest.mark.parametrize("one_sided, power", [(False, -0.25), (True, -0.5)])
def test_shampoo_without_averages_is_the_spectral_step(one_sided, power):
    """β1 = β2 = 0, frequency 1, no grafting: (G Gᵀ)^(−1/4) G (GᵀG)^(−1/4) = U Vᵀ (two-sided), and
    (G Gᵀ)^(−1/2) G = U Vᵀ (one-sided): Shampoo's step is −lr·U Vᵀ."""
    ps = params(SHAPES)
    shampoo = Shampoo(ps, lr=0.1, momentum=0.0, factor_beta=0.0, power=power, one_sided=one_sided,
                      precondition_frequency=1, graft="none")
    ds, gs = steps(shampoo, ps, 3)
    for t in range(3):
        for x, g in zip(ds[t], gs[t]):
            torch.testing.assert_close(x, -0.1 * polar(g), rtol=0, atol=1e-10)


def test_shampoo_with_averages_is_not_the_spectral_step():
    """The control: with its factor averages on, the step leaves the spectral direction."""
    ps = params(SHAPES[:1])
    opt = Shampoo(ps, lr=0.1, momentum=0.0, factor_beta=0.9, precondition_frequency=1, graft="none")
    ds, gs = steps(opt, ps, 3)
    assert (ds[-1][0] + 0.1 * polar(gs[-1][0])).abs().max() > 1e-3


def reference_muon(W, grads, lr, beta, wd, nesterov=True):
    """Keller Jordan's Muon (KellerJordan/Muon, muon_update; here with an exact polar factor):
        m <- lerp(m, g, 1 − β);  u = lerp(g, m, β) (Nesterov) or m;  u = U Vᵀ(u) · max(1, d_out/d_in)^½
        W <- W·(1 − lr·wd) − lr·u"""
    m = torch.zeros_like(W)
    for g in grads:
        m = m + (1 - beta) * (g - m)
        u = g + beta * (m - g) if nesterov else m
        u = polar(u) * max(1.0, W.size(-2) / W.size(-1)) ** 0.5
        W = W * (1 - lr * wd) - lr * u
    return W


@pytest.mark.parametrize("nesterov", [True, False])
def test_normuon_off_is_the_reference_muon(nesterov):
    """NorMuon with normalize = "off" (and Muon itself) against the reference update written above."""
    shapes = [(12, 5), (5, 12), (7, 7)]
    for cls, extra in ((NorMuon, dict(normalize="off")), (Muon, {})):
        ps = params(shapes)
        start = [p.detach().clone() for p in ps]
        opt = cls([{"params": ps, "weight_decay": 0.1}], lr=0.05, momentum=0.9, nesterov=nesterov,
                  orthogonalize="svd", shape_scale="muon", **extra)
        history = [grads_for(ps, 100 + t) for t in range(4)]
        for gs in history:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        for i, (p, w0) in enumerate(zip(ps, start)):
            expected = reference_muon(w0, [h[i] for h in history], 0.05, 0.9, 0.1, nesterov)
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_prodigy_with_d_frozen_is_adam_with_lr_times_d():
    """growth_rate = 1 keeps d at d0: Prodigy's m/√v sees d in both moments, so the step is Adam's at
    learning rate lr·d0 (bias correction on, ε → 0 in both)."""
    shapes = [(6, 4), (9,)]
    ours, ref = params(shapes), params(shapes)
    d0 = 0.3
    prodigy = Prodigy(ours, lr=0.05, betas=(0.9, 0.99), eps=1e-30, d0=d0, growth_rate=1.0, use_bias_correction=True)
    adam = torch.optim.AdamW(ref, lr=0.05 * d0, betas=(0.9, 0.99), eps=1e-30, weight_decay=0.0)
    dp, _ = steps(prodigy, ours, 5)
    da, _ = steps(adam, ref, 5)
    for t in range(5):
        for x, y in zip(dp[t], da[t]):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-15)
    assert prodigy.metrics() == {"prodigy_d_0": d0}
