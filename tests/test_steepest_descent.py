""""Old Optimizer, New Norm" (Bernstein & Newhouse, 2024) as checks: with their moving averages off,
Adam is sign descent, Shampoo is spectral descent (Muon without momentum), Prodigy is Adam with the
step size lr·d, and NorMuon without its normalization is Muon. Each compares full optimizer steps on
random problems in float64; then each step is shown to be the steepest one under its norm: it
maximizes ⟨g, Δ⟩ over the norm's unit ball, against random feasible directions."""

import pytest
import torch

from optimizers import NORMS, Muon, orthogonalize
from optimizers.normuon import NorMuon
from optimizers.prodigy import Prodigy
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


def spectral_ascent(g):
    """U Vᵀ of every matrix of g, by SVD (the reference)."""
    return orthogonalize(g, "svd")


# ---------------------------------------------------------------------------------------------
# Equivalences: full steps


def test_adam_without_averages_is_sign_descent():
    """β1 = β2 = 0, ε → 0: Adam's step is −lr·sign(g), for torch's AdamW and Muon's auxiliary AdamW."""
    shapes = [(6, 4), (9,), (2, 3, 5)]
    torch_adam, muon_adam = params(shapes), params(shapes)
    start = [p.detach().clone() for p in torch_adam]
    a = torch.optim.AdamW(torch_adam, lr=0.01, betas=(0.0, 0.0), eps=1e-30, weight_decay=0.0)
    b = Muon([{"params": muon_adam, "algorithm": "adamw"}], lr=0.01, adam_betas=(0.0, 0.0), adam_eps=1e-30)
    da, gs = steps(a, torch_adam, 4)
    db, _ = steps(b, muon_adam, 4)
    for t in range(4):
        for x, y, g in zip(da[t], db[t], gs[t]):
            expected = -0.01 * NORMS["sign"].direction(g)
            torch.testing.assert_close(x, expected, rtol=0, atol=1e-15)
            torch.testing.assert_close(y, expected, rtol=0, atol=1e-15)
    assert not torch.equal(start[0], torch_adam[0].detach())


@pytest.mark.parametrize("one_sided, power", [(False, -0.25), (True, -0.5)])
def test_shampoo_without_averages_is_the_spectral_step(one_sided, power):
    """β1 = β2 = 0, frequency 1, no grafting: Shampoo's step is −lr·U Vᵀ, Muon's (momentum 0, exact
    orthogonalization) is −lr·√(d_out/d_in)·U Vᵀ: the same direction, up to Muon's shape scale."""
    ps, ref = params(SHAPES), params(SHAPES)
    shampoo = Shampoo(ps, lr=0.1, momentum=0.0, factor_beta=0.0, power=power, one_sided=one_sided,
                      precondition_frequency=1, graft="none")
    muon = Muon(ref, lr=0.1, momentum=0.0, nesterov=False, orthogonalize="svd", shape_scale="spectral")
    ds, gs = steps(shampoo, ps, 3)
    dm, _ = steps(muon, ref, 3)
    for t in range(3):
        for x, y, g in zip(ds[t], dm[t], gs[t]):
            scale = (g.size(-2) / g.size(-1)) ** 0.5
            torch.testing.assert_close(x, -0.1 * spectral_ascent(g), rtol=0, atol=1e-10)
            torch.testing.assert_close(x * scale, y, rtol=0, atol=1e-10)


def test_shampoo_with_averages_is_not_the_spectral_step():
    """The control: with its factor averages on, the step leaves the spectral direction."""
    ps = params(SHAPES[:1])
    opt = Shampoo(ps, lr=0.1, momentum=0.0, factor_beta=0.9, precondition_frequency=1, graft="none")
    ds, gs = steps(opt, ps, 3)
    assert (ds[-1][0] + 0.1 * spectral_ascent(gs[-1][0])).abs().max() > 1e-3


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


def test_prodigy_without_averages_is_sign_descent_with_its_own_step_size():
    """β1 = β2 = β3 = 0, ε → 0: every step is −lr·d·sign(g), on a quadratic 0.5·‖x − x*‖², where d
    grows from d0 as the iterates move toward x*."""
    (x,) = params([(5, 3)])
    target = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    opt = Prodigy([x], lr=1.0, betas=(0.0, 0.0), beta3=0.0, eps=1e-30)
    ds = []
    for _ in range(12):
        d = opt.metrics()["prodigy_d_0"]
        before = x.detach().clone()
        x.grad = before - target
        opt.step()
        torch.testing.assert_close(x.detach() - before, -d * torch.sign(before - target), rtol=1e-9, atol=1e-15)
        ds.append(d)
    assert ds[0] == 1e-6 and ds[-1] > 30 * ds[0] and ds == sorted(ds)


def test_normuon_without_normalization_is_muon():
    ps, ref = params(SHAPES), params(SHAPES)
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, orthogonalize="newton_schulz", weight_decay=0.1)
    normuon = NorMuon(ps, normalize="off", **kw)
    muon = Muon(ref, **kw)
    dn, _ = steps(normuon, ps, 3)
    dm, _ = steps(muon, ref, 3)
    for t in range(3):
        for x, y in zip(dn[t], dm[t]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Dual norms: each step maximizes ⟨g, Δ⟩ over its norm's unit ball


def random_in_ball(norm_name, shape, n, seed=0):
    """n random points on or inside the unit ball of a norm (each scaled onto the sphere)."""
    gen = torch.Generator().manual_seed(seed)
    norm = NORMS[norm_name]
    out = []
    for i in range(n):
        T = torch.randn(*shape, generator=gen, dtype=F64)
        if i % 3 == 1:  # a vertex-like point: ±1 entries / an orthogonal matrix
            T = torch.sign(T) if norm_name == "sign" else orthogonalize(T, "svd")
        out.append(T / norm.norm(T))
    return out


def assert_steepest(g, delta, norm_name, n=300):
    """Δ/‖Δ‖ attains the dual norm ‖g‖_* = max ⟨g, T⟩ over ‖T‖ <= 1, and no random T of the ball does better."""
    norm = NORMS[norm_name]
    unit = delta / norm.norm(delta)
    best = (g * unit).sum()
    torch.testing.assert_close(best, norm.dual_norm(g), rtol=1e-9, atol=0)
    for T in random_in_ball(norm_name, g.shape, n):
        assert norm.norm(T) <= 1 + 1e-12
        assert (g * T).sum() <= best + 1e-12
    # moving a little away from the step inside the ball lowers ⟨g, ·⟩
    nudged = unit + 1e-3 * random_in_ball(norm_name, g.shape, 1, seed=1)[0]
    assert (g * (nudged / norm.norm(nudged))).sum() < best


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


def test_normuon_step_without_normalization_is_steepest_in_the_spectral_norm():
    ps = params([(8, 5)])
    opt = NorMuon(ps, normalize="off", momentum=0.0, nesterov=False, orthogonalize="svd")
    ds, gs = steps(opt, ps, 2)
    assert_steepest(gs[-1][0], -ds[-1][0], "spectral")


def test_the_check_catches_a_step_that_is_not_steepest():
    """The dual-norm check itself can fail: Adam with its averages on is not the sign step."""
    ps = params([(6, 4)])
    opt = torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    ds, gs = steps(opt, ps, 3)
    with pytest.raises(AssertionError):
        assert_steepest(gs[-1][0], -ds[-1][0], "sign")
