"""Muon, Scion, Signum and AdamW: each is exactly the algorithm in its paper."""

import copy

import pytest
import torch

from optimizers import NORMS, Muon, Scion, Signum, build_optimizer, orthogonalize
from optimizers import muon as muon_module
from optimizers.muon import shape_scale

F64 = torch.float64


def params(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=F64)) for s in shapes]


def grads_for(ps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=F64) for p in ps]


def run(opt, ps, steps, seed0=100, accumulate=False):
    """`steps` steps on fresh gradients; accumulate=True adds them into p.grad in place, as
    backward does when the trainer does not zero the gradients."""
    for t in range(steps):
        for p, g in zip(ps, grads_for(ps, seed0 + t)):
            if accumulate and p.grad is not None:
                p.grad.add_(g)
            else:
                p.grad = g.clone()
        opt.step()


# ---------------------------------------------------------------------------------------------
# Muon


def test_muon_with_zero_momentum_is_spectral_steepest_descent():
    ps = params((12, 5), (5, 12), (3, 6, 6))
    before = [p.detach().clone() for p in ps]
    grads = grads_for(ps, 1)
    opt = Muon([{"params": ps}], lr=0.1, momentum=0.0, nesterov=False, orthogonalize="svd", shape_scale="spectral")
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    for p, w, g in zip(ps, before, grads):
        torch.testing.assert_close(p.detach(), w - 0.1 * NORMS["spectral"].direction(g))


def test_muon_update_equations():
    """Two steps by hand: EMA momentum, Nesterov, decoupled weight decay, shape scaling."""
    (p,) = params((16, 8))
    w0 = p.detach().clone()
    g1, g2 = grads_for([p], 1)[0], grads_for([p], 2)[0]
    opt = Muon([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5, orthogonalize="svd", shape_scale="muon")
    p.grad = g1.clone()
    opt.step()
    p.grad = g2.clone()
    opt.step()
    s = max(1, 16 / 8) ** 0.5
    m1 = 0.1 * g1
    w1 = w0 * (1 - 0.1 * 0.5) - 0.1 * s * orthogonalize(0.1 * g1 + 0.9 * m1, "svd")
    m2 = 0.9 * m1 + 0.1 * g2
    w2 = w1 * (1 - 0.1 * 0.5) - 0.1 * s * orthogonalize(0.1 * g2 + 0.9 * m2, "svd")
    torch.testing.assert_close(p.detach(), w2)


def test_shape_scalings():
    assert shape_scale("muon", 3072, 768) == 2.0 and shape_scale("muon", 768, 3072) == 1.0
    assert shape_scale("spectral", 768, 3072) == 0.5
    assert shape_scale("adamw", 768, 3072) == pytest.approx(0.2 * 3072**0.5)
    with pytest.raises(ValueError, match="unknown shape scaling"):
        shape_scale("mup", 1, 1)


def test_muon_batches_same_shape_matrices(monkeypatch):
    calls = []
    real = muon_module.orthogonalize

    def counting(G, *a, **k):
        calls.append(tuple(G.shape))
        return real(G, *a, **k)

    ps = params((8, 4), (8, 4), (4, 8), (8, 4), (2, 4, 8))
    one_by_one = [p.detach().clone() for p in ps]
    grads = grads_for(ps, 3)
    monkeypatch.setattr(muon_module, "orthogonalize", counting)
    opt = Muon(ps, lr=0.1, momentum=0.0, nesterov=False, orthogonalize="svd")
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    assert sorted(calls) == sorted([(3, 8, 4), (1, 4, 8), (1, 2, 4, 8)])  # one call per shape
    for w, p, g in zip(one_by_one, ps, grads):  # same result as orthogonalizing each alone
        torch.testing.assert_close(p.detach(), w - 0.1 * shape_scale("muon", *g.shape[-2:]) * real(g, "svd"))


def test_muon_auxiliary_adamw_equals_torch_adamw():
    ps = params((10, 3), (7,))
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = Muon([{"params": ps, "algorithm": "adamw", "lr": 0.01, "weight_decay": 0.1}], adam_betas=(0.8, 0.95), adam_eps=1e-10)
    theirs = torch.optim.AdamW(ref, lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    run(ours, ps, 5)
    run(theirs, ref, 5)
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b)


def test_foreach_adamw_is_the_per_tensor_step_bitwise():
    """Muon's AdamW groups step with foreach kernels (issue 13): same numbers as the reference loop."""
    from optimizers import auxiliary

    torch.manual_seed(0)
    ps = [torch.randn(s, dtype=torch.float32) for s in [(5, 3), (7,), (4, 4)]]
    ref = [p.clone() for p in ps]
    states, ref_states = [{} for _ in ps], [{} for _ in ps]
    for _ in range(4):
        gs = [torch.randn_like(p) for p in ps]
        auxiliary.adamw_foreach(ps, gs, states, 0.01, (0.8, 0.95), 1e-10, 0.1)
        for p, g, st in zip(ref, gs, ref_states):
            auxiliary.adamw_step(p, g, st, 0.01, (0.8, 0.95), 1e-10, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(ps, ref))
    assert [st["step"] for st in states] == [4, 4, 4]


def test_fused_adamw_is_the_per_tensor_step_up_to_rounding():
    """The fused kernel (CUDA's auxiliary AdamW; torch has it on CPU too): the reference's numbers to float32
    rounding, the same state layout (an int step), tensors that took different numbers of steps each with
    their own bias correction."""
    from optimizers import auxiliary

    torch.manual_seed(0)
    ps = [torch.randn(s, dtype=torch.float32) for s in [(5, 3), (7,), (4, 4)]]
    ref = [p.clone() for p in ps]
    states, ref_states = [{} for _ in ps], [{} for _ in ps]
    for i in range(4):
        gs = [torch.randn_like(p) for p in ps]
        live = [0, 1, 2] if i else [0, 2]  # tensor 1 misses the first step
        auxiliary.adamw_fused([ps[j] for j in live], [gs[j] for j in live], [states[j] for j in live], 0.01,
                              (0.8, 0.95), 1e-10, 0.1)
        for j in live:
            auxiliary.adamw_step(ref[j], gs[j], ref_states[j], 0.01, (0.8, 0.95), 1e-10, 0.1)
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert [st["step"] for st in states] == [4, 3, 4] and all(isinstance(st["step"], int) for st in states)


def test_muon_rejects_vectors_in_muon_groups():
    with pytest.raises(ValueError, match="belongs in an 'adamw' group"):
        Muon(params((5,)))


# ---------------------------------------------------------------------------------------------
# Sign descent and Adam


def test_adam_without_moving_averages_is_sign_descent():
    ps = params((6, 4), (5,))
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    adam = torch.optim.AdamW(ps, lr=0.01, betas=(0.0, 0.0), eps=1e-30, weight_decay=0.0)
    sign = Signum(ref, lr=0.01, momentum=0.0)
    run(adam, ps, 4)
    run(sign, ref, 4)
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_signum_foreach_step_equals_a_per_tensor_loop():
    ps = params((6, 4), (5,), (3, 3))
    ref = [p.detach().clone() for p in ps]
    bufs = [torch.zeros_like(p) for p in ref]
    opt = Signum(ps, lr=0.05, momentum=0.7, weight_decay=0.1)
    for seed in range(3):
        gs = grads_for(ps, seed)
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        for w, m, g in zip(ref, bufs, gs):
            m.lerp_(g, 0.3)
            w.mul_(1 - 0.05 * 0.1).add_(torch.sign(m), alpha=-0.05)
    assert all(torch.equal(p.detach(), w) for p, w in zip(ps, ref))


def test_signum_equations():
    (p,) = params((4, 4))
    w0 = p.detach().clone()
    g1, g2 = grads_for([p], 5)[0], grads_for([p], 6)[0]
    opt = Signum([p], lr=0.1, momentum=0.5, weight_decay=0.2)
    p.grad = g1.clone()
    opt.step()
    p.grad = g2.clone()
    opt.step()
    m1 = 0.5 * g1
    w1 = w0 * (1 - 0.02) - 0.1 * torch.sign(m1)
    w2 = w1 * (1 - 0.02) - 0.1 * torch.sign(0.5 * m1 + 0.5 * g2)
    torch.testing.assert_close(p.detach(), w2)


# ---------------------------------------------------------------------------------------------
# Scion


def scion_groups(ps, **extra):
    norms = ["spectral", "sign", "colnorm", "rownorm", "rms", "sign_fanin", "euclidean"]
    return [dict(params=[p], norm=n, scale=s, **extra) for p, n, s in zip(ps, norms, [2.0, 0.5, 1.5, 3.0, 0.7, 5.0, 1.0])]


SCION_SHAPES = [(12, 6), (6, 9), (10, 4), (4, 10), (7,), (5, 8), (3, 3)]


def test_unconstrained_scion_update_equation():
    ps = params(*SCION_SHAPES)
    before = [p.detach().clone() for p in ps]
    opt = Scion(scion_groups(ps), lr=0.05, momentum=0.9, constrained=False, weight_decay=0.3, orthogonalize="svd")
    grads = grads_for(ps, 7)
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    for group, w, g in zip(opt.param_groups, before, grads):
        (p,) = group["params"]
        d = 0.1 * g  # momentum average after one step from zero
        lmo = NORMS[group["norm"]].lmo(d, group["scale"], **({"method": "svd"} if group["norm"] == "spectral" else {}))
        torch.testing.assert_close(p.detach(), (1 - 0.05 * 0.3) * w + 0.05 * lmo)


@pytest.mark.parametrize("method, slack", [("svd", 1e-9), ("newton_schulz", 0.21)])
def test_constrained_scion_stays_in_the_norm_ball(method, slack):
    """SCG is a convex combination of x and a point of the ball, so x never leaves it. With
    Newton-Schulz the LMO is only approximately in the ball (singular values up to 1.2035), so
    the spectral ball is inflated by at most that factor."""
    ps = params(*SCION_SHAPES)
    opt = Scion(scion_groups(ps), lr=0.2, momentum=0.5, constrained=True, orthogonalize=method)
    opt.init_parameters()
    for t in range(60):
        for p, g in zip(ps, grads_for(ps, 200 + t)):
            p.grad = g * 10 ** (t % 3)
        opt.step()
        for group in opt.param_groups:
            (p,) = group["params"]
            bound = group["scale"] * (1 + (slack if group["norm"] == "spectral" else 1e-9))
            assert NORMS[group["norm"]].norm(p.detach()) <= bound, (group["norm"], t)


def test_scion_init_lands_on_the_sphere_of_radius_scale():
    ps = params(*SCION_SHAPES)
    opt = Scion(scion_groups(ps), orthogonalize="svd")
    opt.init_parameters()
    for group in opt.param_groups:
        (p,) = group["params"]
        assert NORMS[group["norm"]].norm(p.detach()).item() == pytest.approx(group["scale"], rel=1e-9)


def test_unconstrained_with_weight_decay_is_constrained_with_rescaled_step_and_radius():
    """uSCG with (lr γ, radius ρ, decay λ): x <- (1 - γλ)x + γ lmo_ρ(d) = (1 - γλ)x + γλ lmo_{ρ/λ}(d),
    which is SCG with step γλ and radius ρ/λ (the paper's equivalence; λ = 1 gives SCG itself)."""
    gamma, lam = 0.05, 0.4
    ps = params(*SCION_SHAPES)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    u = Scion(scion_groups(ps), lr=gamma, momentum=0.8, constrained=False, weight_decay=lam, orthogonalize="svd")
    c_groups = scion_groups(qs)
    for g in c_groups:
        g["scale"] /= lam
    c = Scion(c_groups, lr=gamma * lam, momentum=0.8, constrained=True, orthogonalize="svd")
    run(u, ps, 6)
    run(c, qs, 6)
    for a, b in zip(ps, qs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("zero_grads", [False, True])
def test_light_variant_takes_the_same_steps(zero_grads):
    """Momentum kept in p.grad (no buffer) gives the same parameters as the plain variant, whether
    the trainer keeps the gradients (the memory saving) or resets them every step."""
    ps = params(*SCION_SHAPES)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    plain = Scion(scion_groups(ps), lr=0.05, momentum=0.8, orthogonalize="svd")
    light = Scion(scion_groups(qs), lr=0.05, momentum=0.8, orthogonalize="svd", light=True)
    assert all(light.holds_state_in_grad(g) for g in light.param_groups)
    assert not any(plain.holds_state_in_grad(g) for g in plain.param_groups)
    for t in range(5):
        grads = grads_for(ps, 300 + t)
        for p, q, g in zip(ps, qs, grads):
            p.grad = g.clone()
            if zero_grads or q.grad is None:
                q.grad = g.clone()
            else:
                q.grad += g
        plain.step()
        light.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q)
    assert all(q.grad is light.state[q]["momentum_buffer"] for q in qs)  # no second buffer


def test_transposed_groups_treat_tables_as_maps_from_one_hot_vectors():
    """A (vocab, dim) embedding table under colnorm: each token's row is normalized (a column of
    the (dim, vocab) linear map)."""
    (table,) = params((20, 6))
    before = table.detach().clone()
    opt = Scion([dict(params=[table], norm="colnorm", scale=1.0, transposed=True)], lr=1.0, momentum=0.0,
                constrained=False)
    table.grad = grads_for([table], 9)[0]
    opt.step()
    step = before - table.detach()  # = direction
    torch.testing.assert_close(step.pow(2).mean(dim=1), torch.ones(20, dtype=F64))


def test_scion_rejects_bad_groups():
    with pytest.raises(ValueError, match="unknown norm"):
        Scion(params((3, 3)), norm="nuclear")
    with pytest.raises(ValueError, match="needs a vector norm"):
        Scion(params((3,)), norm="spectral")
    with pytest.raises(ValueError, match="no separate weight decay"):
        Scion(params((3, 3)), constrained=True, weight_decay=0.1)


# ---------------------------------------------------------------------------------------------
# state_dict round trips


def _round_trip(make, shapes, steps_before=3, steps_after=3, light=False):
    ps = params(*shapes)
    a = make(ps)
    run(a, ps, steps_before, accumulate=light)
    saved = copy.deepcopy(a.state_dict())
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    b = make(qs)
    b.load_state_dict(saved)
    # a fresh process has no gradients: the light variant restores its momentum from the state
    run(a, ps, steps_after, seed0=500, accumulate=light)
    run(b, qs, steps_after, seed0=500, accumulate=light)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q)


def test_state_dict_round_trips_resume_identically():
    shapes = [(8, 4), (4, 8), (6,)]
    _round_trip(lambda ps: Muon([dict(params=ps[:2]), dict(params=ps[2:], algorithm="adamw", lr=0.01)], lr=0.02),
                shapes)
    _round_trip(lambda ps: Scion([dict(params=ps[:2], norm="spectral", scale=3.0),
                                  dict(params=ps[2:], norm="rms", scale=1.0)], lr=0.05), shapes)
    _round_trip(lambda ps: Scion([dict(params=ps[:2], norm="spectral", scale=3.0),
                                  dict(params=ps[2:], norm="rms", scale=1.0)], lr=0.05, light=True), shapes, light=True)
    _round_trip(lambda ps: Signum(ps, lr=0.01), shapes)


# ---------------------------------------------------------------------------------------------
# Building from the model's roles


def test_build_from_roles():
    from model import GPT
    from training.config import load_config

    for name in ["muon", "scion", "adamw", "signum"]:
        cfg = load_config("configs/smoke.toml", [f"--optim.name={name}"])
        model = GPT(cfg.model)
        opt = build_optimizer(model.params_by_role(), cfg.optim, torch.device("cpu"))
        roles = {g["role"]: g for g in opt.param_groups}
        assert set(roles) == {"embed", "hidden", "head", "scalar"}
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
        assert all(g["lr"] == cfg.optim.role_lr(g["role"]) for g in opt.param_groups)
        if name == "muon":
            assert roles["hidden"]["algorithm"] == "muon" and roles["embed"]["algorithm"] == "adamw"
            assert roles["hidden"]["lr"] == cfg.optim.lr and roles["embed"]["lr"] == 0.6
        if name == "scion":
            assert isinstance(opt, Scion) and roles["embed"]["transposed"] and not roles["head"]["transposed"]
            assert [roles[r]["norm"] for r in ("embed", "hidden", "head")] == ["sign", "spectral", "sign_fanin"]
            assert all(g["lr"] == cfg.optim.lr for g in opt.param_groups)
        if name == "adamw":
            assert isinstance(opt, torch.optim.AdamW)
        if name == "signum":
            assert isinstance(opt, Signum)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_auxiliary_adamw_takes_the_fused_kernel_and_matches_the_reference(monkeypatch):
    from optimizers import auxiliary

    used = []
    fused = auxiliary.adamw_fused
    monkeypatch.setattr(auxiliary, "adamw_fused", lambda *a, **k: used.append(1) or fused(*a, **k))
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in [(50304, 64), (7,), (64, 64)]]
    ref = [p.detach().clone() for p in ps]
    group = dict(params=ps, algorithm="adamw", lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    state, ref_states = {p: {} for p in ps}, [{} for _ in ps]
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        auxiliary.auxiliary_step(group, state)
        for r, p, st in zip(ref, ps, ref_states):
            auxiliary.adamw_step(r, p.grad, st, 0.01, (0.8, 0.95), 1e-10, 0.1)
    assert used == [1, 1, 1]
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)
