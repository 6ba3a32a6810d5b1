"""Claims of the seed papers that the optimizers rely on, each checked on the optimizers themselves:

- Pethick et al. (2025), "Training Deep Learning Models with Norm-Constrained LMOs": Muon without Nesterov
  is unconstrained SCG (uSCG) with the spectral LMO (bitwise, same orthogonalization);
- Newhouse's thesis ("Duality, Weight Decay, and Metrized Deep Learning"): with decoupled weight decay λ, an
  update of RMS→RMS norm at most u keeps the weights' RMS→RMS norm at most u/λ in the steady state (the
  argument the Lipschitz sweep relies on), for Muon's u = the orthogonalizer's largest output;
- Bernstein & Newhouse ("modular norm" slides, "Old Optimizer, New Norm"): the layerwise steps
  −(η/s_l)·argmax_{‖T_l‖_l ≤ 1}⟨g_l, T_l⟩ solve min_Δ ⟨g, Δ⟩ + (λ/2)·max_l (s_l‖Δ_l‖_l)² for the right η;
- the point of the spectral scaling: one step's change of a layer's output, ‖ΔW x‖_RMS, does not depend on
  the width for Muon and Scion, and grows with it for AdamW (widths 64 to 2,048).
The norms here are written out in the test (not taken from optimizers/norms.py)."""

import math

import pytest
import torch

from optimizers import Muon
from optimizers.orthogonalize import largest_singular_value
from optimizers.scion import Scion

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rms_rms(W):
    """RMS→RMS operator norm √(d_in/d_out)·σ_max."""
    return math.sqrt(W.size(-1) / W.size(-2)) * float(torch.linalg.matrix_norm(W, ord=2))


@pytest.mark.parametrize("method", ["newton_schulz", "svd"])
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_muon_without_nesterov_is_unconstrained_scg_with_the_spectral_lmo(method, shape):
    """Muon (momentum β as an EMA, no Nesterov, shape scale √(d_out/d_in), decoupled weight decay λ) and
    uSCG (d <- β·d + (1 − β)·g, x <- (1 − γλ)·x + γ·lmo(d), lmo = −ρ·√(d_out/d_in)·UVᵀ, ρ = 1) take the
    same steps, bit for bit."""
    a, b = torch.nn.Parameter(randn(*shape)), torch.nn.Parameter(randn(*shape))
    muon = Muon([a], lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.1, orthogonalize=method,
                shape_scale="spectral")
    scion = Scion([dict(params=[b], norm="spectral", scale=1.0, weight_decay=0.1)], lr=0.05, momentum=0.9,
                  constrained=False, orthogonalize=method)
    for t in range(6):
        g = randn(*shape, seed=10 + t)
        a.grad, b.grad = g.clone(), g.clone()
        muon.step()
        scion.step()
        assert torch.equal(a.detach(), b.detach()), t


def test_muon_with_weight_decay_keeps_the_rms_norm_below_overshoot_over_lambda():
    """W_{t+1} = (1 − ηλ)·W_t − η·U_t with ‖U_t‖ <= u gives ‖W_t‖ <= (1 − ηλ)^t·‖W_0‖ + (u/λ)·(1 − (1 − ηλ)^t)
    in any norm, so u/λ in the steady state; for Muon with the spectral shape scale, u is the 5-step
    quintic's largest output, 1.2024 (not 1). A fixed gradient direction pushes the norm to its limit."""
    lr, wd = 0.05, 0.5
    u = largest_singular_value("newton_schulz", 5)
    W = torch.nn.Parameter(randn(24, 16) * 3)
    opt = Muon([W], lr=lr, momentum=0.0, nesterov=False, weight_decay=wd, shape_scale="spectral")
    w0, grad, norms = rms_rms(W.detach()), randn(24, 16, seed=1), []
    for t in range(1, 401):
        W.grad = grad + 0.05 * randn(24, 16, seed=100 + t)
        before = W.detach().clone()
        opt.step()
        step = (before * (1 - lr * wd) - W.detach()) / lr  # U_t
        assert rms_rms(step) <= u * (1 + 1e-9)
        norms.append(rms_rms(W.detach()))
        assert norms[-1] <= (1 - lr * wd) ** t * w0 + (u / wd) * (1 - (1 - lr * wd) ** t) + 1e-9
    assert norms[-1] <= u / wd and norms[-1] > 0.5 / wd  # near the limit: one update's norm / λ (> 0.68)


def test_layerwise_steps_solve_the_max_norm_regularized_problem():
    """Layers with different norms (spectral RMS→RMS, max-of-max, RMS of a vector) and scales s_l: the
    minimizer of ⟨g, Δ⟩ + (λ/2)·(max_l s_l‖Δ_l‖_l)² is Δ_l = −(η/s_l)·T_l, T_l the unit steepest direction of
    layer l, η = Σ_l ‖g_l‖_{l,*}/s_l / λ, with value −(Σ_l ‖g_l‖_{l,*}/s_l)²/(2λ). Scion (momentum 0,
    uSCG, radius 1/s_l per layer, lr η) takes exactly that step. No random alternative does better."""
    shapes = {"hidden": (8, 6), "head": (5, 8), "gain": (8,)}
    s = {"hidden": 2.0, "head": 0.5, "gain": 3.0}
    norm = {"hidden": rms_rms, "head": lambda W: float(W.abs().max()),
            "gain": lambda w: float(w.norm() / math.sqrt(w.numel()))}
    dual = {"hidden": lambda G: math.sqrt(G.size(0) / G.size(1)) * float(torch.linalg.svdvals(G).sum()),
            "head": lambda G: float(G.abs().sum()), "gain": lambda g: math.sqrt(g.numel()) * float(g.norm())}
    scion_norm = {"hidden": "spectral", "head": "sign", "gain": "rms"}
    g = {name: randn(*shape, seed=i) for i, (name, shape) in enumerate(shapes.items())}
    lam = 3.0
    eta = sum(dual[n](g[n]) / s[n] for n in g) / lam
    ps = {n: torch.nn.Parameter(torch.zeros(shapes[n], dtype=F64)) for n in g}
    opt = Scion([dict(params=[ps[n]], norm=scion_norm[n], scale=1 / s[n]) for n in g], lr=eta, momentum=0.0,
                constrained=False, orthogonalize="svd")
    for n in g:
        ps[n].grad = g[n].clone()
    opt.step()
    delta = {n: ps[n].detach().clone() for n in g}

    def objective(d):
        return sum(float((g[n] * d[n]).sum()) for n in g) + lam / 2 * max(s[n] * norm[n](d[n]) for n in g) ** 2

    best = objective(delta)
    assert best == pytest.approx(-(lam * eta) ** 2 / (2 * lam), rel=1e-10)
    for n in g:  # every layer moves the same scaled distance η
        assert s[n] * norm[n](delta[n]) == pytest.approx(eta, rel=1e-10)
    gen = torch.Generator().manual_seed(7)
    for trial in range(300):
        scale = 10 ** (-3 + 3 * trial / 300)
        other = {n: delta[n] + scale * torch.randn(delta[n].shape, generator=gen, dtype=F64) for n in g}
        assert objective(other) >= best - 1e-9
    for factor in (0.5, 0.9, 1.1, 2.0):  # the same directions, another distance
        assert objective({n: factor * delta[n] for n in g}) > best


def one_step_output_change(make_opt, width, seed=0, batch=8):
    """‖ΔW x‖_RMS after one step on a width × width layer whose gradient is a batch's Σ δ_b x_bᵀ, for
    x = x_1, an input of RMS 1 from the batch."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(width, width, generator=gen, dtype=F64) / math.sqrt(width))
    xs = torch.randn(batch, width, generator=gen, dtype=F64)
    xs = xs / xs.pow(2).mean(dim=1, keepdim=True).sqrt()  # each input RMS 1
    deltas = torch.randn(batch, width, generator=gen, dtype=F64) / width
    opt = make_opt(W)
    before = W.detach().clone()
    W.grad = deltas.T @ xs
    opt.step()
    change = (W.detach() - before) @ xs[0]
    return float(change.pow(2).mean().sqrt())


OPTIMIZERS = {
    "muon": lambda W: Muon([W], lr=0.02, momentum=0.0, nesterov=False),
    "scion": lambda W: Scion([dict(params=[W], norm="spectral", scale=1.0)], lr=0.02, momentum=0.0,
                             constrained=False),
    "adamw": lambda W: torch.optim.AdamW([W], lr=0.02, weight_decay=0.0),
}
WIDTHS = [64, 128, 256, 512, 1024, 2048]


def test_one_step_output_change_is_width_independent_for_muon_and_scion_not_adamw():
    """Muon and Scion: ‖ΔW x‖_RMS = lr·s·‖Vᵀx‖/√d_out ≈ lr·RMS(x) at every width (measured: within 12% from
    64 to 2,048, a log-log slope of 0.02, the spread from Newton-Schulz's band); AdamW's first step is
    lr·sign(G), whose output change grows like the width (≈ 32x over 32x, slope ≈ 1)."""
    changes = {name: [one_step_output_change(make, w) for w in WIDTHS] for name, make in OPTIMIZERS.items()}
    span = math.log(WIDTHS[-1]) - math.log(WIDTHS[0])
    for name in ("muon", "scion"):
        values = changes[name]
        assert max(values) / min(values) < 1.2, (name, values)
        assert abs(math.log(values[-1] / values[0]) / span) < 0.05, (name, values)
        assert 0.5 * 0.02 < values[-1] < 1.3 * 0.02  # about lr x RMS(x) (Newton-Schulz's band around 1)
    adamw = changes["adamw"]
    growth = adamw[-1] / adamw[0]
    assert 20 < growth < 45, adamw  # width x32
    assert 0.85 < math.log(growth) / span < 1.1
