"""Prodigy: its update equations against the paper's (written out plainly), d per role through
metrics(), its state across a checkpoint, and its settings."""

import copy
import math

import pytest
import torch

from common.errors import ConfigError
from optimizers.prodigy import Prodigy
from optimizers.registry import build_optimizer
from tests.test_train import REPO, TINY
from training.config import load_config, validate

F64 = torch.float64
SMOKE_PRODIGY = str(REPO / "configs/smoke_prodigy.toml")


def problem(shapes, seed=0):
    """Parameters and targets of a quadratic 0.5·Σ c·‖x − x*‖² (so that d has a distance to find)."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=F64)) for s in shapes]
    targets = [torch.randn(*s, generator=g, dtype=F64) for s in shapes]
    return ps, targets


def set_grads(ps, targets, noise_seed):
    g = torch.Generator().manual_seed(noise_seed)
    for p, x_star in zip(ps, targets):
        p.grad = (p.detach() - x_star) + 0.1 * torch.randn(p.shape, generator=g, dtype=F64)


def reference_prodigy(xs, grads_of, steps, lr, betas, eps, d0, wd, bias_correction, safeguard, growth,
                      cap_first=False, eps_step_d=False):
    """The published Prodigy (Mishchenko & Defazio, Adam version) for one group, as its reference
    implementation (konstmish/prodigy) runs it, written out with the paper's (1 − β3) factors:
    r and s accumulate with the current d; no step while ‖s‖₁ = 0; d̂ = r/‖s‖₁, d_max = max(d_max, d̂);
    the first increase from d0 starts from max(d0, d̂) (uncapped), then d' = min(d_max, growth·d); the step
    x -= γ·d·m/(√v + d'·ε) uses the old d and ε times the new one. cap_first / eps_step_d: the project's
    options (growth caps the first increase too; ε times the old d)."""
    beta1, beta2 = betas
    beta3 = math.sqrt(beta2)
    x0 = [x.clone() for x in xs]
    m = [torch.zeros_like(x) for x in xs]
    v = [torch.zeros_like(x) for x in xs]
    s = [torch.zeros_like(x) for x in xs]
    r, d, d_max, history = 0.0, d0, d0, []
    for k in range(1, steps + 1):
        gs = grads_of(xs, k)
        gamma = lr * (math.sqrt(1 - beta2**k) / (1 - beta1**k) if bias_correction else 1.0)
        gamma_s = 1.0 if safeguard else gamma
        r_new = beta3 * r + (1 - beta3) * gamma * d**2 * sum(float((g * (a - x)).sum()) for g, a, x in zip(gs, x0, xs))
        for i, g in enumerate(gs):
            m[i] = beta1 * m[i] + (1 - beta1) * d * g
            v[i] = beta2 * v[i] + (1 - beta2) * d**2 * g**2
            s[i] = beta3 * s[i] + (1 - beta3) * gamma_s * d**2 * g
        s_norm = sum(float(si.abs().sum()) for si in s)
        if s_norm == 0:
            history.append(d)
            continue
        r = r_new
        d_hat = r / s_norm
        d_max = max(d_max, d_hat)
        start = max(d, d_hat) if d == d0 and not cap_first else d
        new_d = d_max if growth is None else min(d_max, growth * start)
        eps_d = d if eps_step_d else new_d
        xs = [(1 - gamma * d * wd) * x - gamma * d * mi / (vi.sqrt() + eps_d * eps) for x, mi, vi in zip(xs, m, v)]
        d = new_d
        history.append(d)
    return xs, history


@pytest.mark.parametrize("bias_correction, safeguard, growth, wd, cap_first, eps_step_d", [
    (False, False, None, 0.0, False, False),
    (True, False, None, 0.1, False, False),
    (False, True, 1.2, 0.0, False, False),
    (False, False, 1.2, 0.0, False, False),
    (False, False, 1.2, 0.0, True, False),  # the project's options
    (False, False, None, 0.0, False, True),
])
def test_prodigy_update_equations(bias_correction, safeguard, growth, wd, cap_first, eps_step_d):
    """Two param groups (two roles) with their own d, 10 steps on a noisy quadratic, against the
    published equations (short averages, so that d grows within the 10 steps and a growth limit binds)."""
    hp = dict(lr=0.5, betas=(0.5, 0.9), eps=1e-3, d0=1e-3, wd=wd, bias_correction=bias_correction,
              safeguard=safeguard, growth=growth, cap_first=cap_first, eps_step_d=eps_step_d)
    (a, b), (ta, tb) = problem([(6, 4), (5,)])
    start = [a.detach().clone(), b.detach().clone()]
    noise = [[0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * k + i), dtype=F64)
              for i, p in enumerate((a, b))] for k in range(1, 11)]
    opt = Prodigy([{"params": [a], "role": "hidden"}, {"params": [b], "role": "scalar", "lr": 0.25}],
                  lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], d0=hp["d0"], weight_decay=wd,
                  use_bias_correction=bias_correction, safeguard_warmup=safeguard, growth_rate=growth,
                  cap_first_increase=cap_first, eps_with_step_d=eps_step_d)
    ds = []
    for k in range(10):
        a.grad, b.grad = (a.detach() - ta) + noise[k][0], (b.detach() - tb) + noise[k][1]
        opt.step()
        ds.append(opt.metrics())
    expected_a, history_a = reference_prodigy(
        [start[0]], lambda xs, k: [xs[0] - ta + noise[k - 1][0]], 10, **hp)
    expected_b, history_b = reference_prodigy(
        [start[1]], lambda xs, k: [xs[0] - tb + noise[k - 1][1]], 10, **{**hp, "lr": 0.25})
    torch.testing.assert_close(a.detach(), expected_a[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.detach(), expected_b[0], rtol=1e-10, atol=1e-12)
    assert [m["prodigy_d_hidden"] for m in ds] == pytest.approx(history_a, rel=1e-10)
    assert [m["prodigy_d_scalar"] for m in ds] == pytest.approx(history_b, rel=1e-10)
    assert history_a == sorted(history_a) and history_a != history_b  # d never shrinks; one per role
    assert history_a[-1] > 1.5 * hp["d0"]
    if growth is not None:
        ratios = [y / x for x, y in zip(history_a, history_a[1:])]
        first = next(i for i, r in enumerate(ratios) if r > 1)  # the first increase from d0
        later = ratios[first + 1:]
        assert max(later) == pytest.approx(growth, rel=1e-9)  # the limit binds after the first increase
        if cap_first:
            assert ratios[first] <= growth * (1 + 1e-12)  # ... and the first one too when asked


def test_first_increase_is_uncapped_unless_asked():
    """With growth 1.02, d's first increase from d0 is d̂/d0 (x1.58 here); cap_first_increase makes it 1.02."""
    for cap in (False, True):
        (x,), (t,) = problem([(8, 8)])
        opt = Prodigy([x], lr=1.0, growth_rate=1.02, cap_first_increase=cap)
        d = [1e-6]
        while d[-1] == 1e-6 and len(d) < 20:
            x.grad = x.detach() - t
            opt.step()
            d.append(opt.metrics()["prodigy_d_0"])
        ratio = d[-1] / 1e-6
        assert ratio == pytest.approx(1.02) if cap else ratio > 1.3, (cap, d)


def test_eps_takes_the_updated_d_unless_asked():
    """β1 = β2 = 0: a step is x -= lr·d·(d·g)/(d·|g| + d_eps·ε); at the step where d grows, a large ε shows
    whether d_eps is the updated d (the reference) or the step's d (eps_with_step_d)."""
    for step_d in (False, True):
        (x,), (t,) = problem([(4, 3)])
        opt = Prodigy([x], lr=1.0, betas=(0.0, 0.0), beta3=0.0, eps=1.0, d0=0.01, eps_with_step_d=step_d)
        for _ in range(30):
            before, d_old = x.detach().clone(), opt.metrics()["prodigy_d_0"]
            g = (before - t) + 0.5 * torch.sign(before - t)
            x.grad = g.clone()
            opt.step()
            d_new = opt.metrics()["prodigy_d_0"]
            if d_new > d_old:
                break
        assert d_new > 1.05 * d_old
        eps_d = d_old if step_d else d_new
        expected = before - d_old * (d_old * g) / (d_old * g.abs() + eps_d * 1.0)
        torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-14)
        other = before - d_old * (d_old * g) / (d_old * g.abs() + (d_new if step_d else d_old) * 1.0)
        assert (x.detach() - other).abs().max() > 1e-6  # the two choices differ visibly here


def test_no_step_without_gradient_signal():
    """All gradients zero from the start: ‖s‖₁ = 0, so neither x nor d nor the step count move."""
    (x,), _ = problem([(5, 5)])
    before = x.detach().clone()
    opt = Prodigy([x], lr=1.0, weight_decay=0.1)
    for _ in range(3):
        x.grad = torch.zeros_like(x)
        opt.step()
    assert torch.equal(x.detach(), before) and opt.metrics()["prodigy_d_0"] == 1e-6
    assert opt.param_groups[0].get("k", 0) == 0


def test_metrics_give_d_per_role_of_the_model():
    from model import GPT

    cfg = load_config(SMOKE_PRODIGY, TINY)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model.params_by_role(), cfg.optim, torch.device("cpu"))
    assert opt.metrics() == {f"prodigy_d_{r}": 1e-6 for r in ("embed", "hidden", "head", "scalar")}
    x = torch.randint(0, cfg.model.vocab_size, (4, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
    for _ in range(8):
        model(x, x).backward()
        opt.step()
        opt.zero_grad()
    d = opt.metrics()
    assert all(value > 1e-6 for value in d.values()), d
    assert len(set(d.values())) == 4  # each role found its own


def test_state_dict_round_trip_continues_exactly():
    (a, b), targets = problem([(6, 4), (5,)])
    opt = Prodigy([a, b], use_bias_correction=True)
    for k in range(4):
        set_grads([a, b], targets, k)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())  # as a checkpoint file: no tensors shared with opt
    copies = [torch.nn.Parameter(p.detach().clone()) for p in (a, b)]
    resumed = Prodigy(copies, use_bias_correction=True)
    resumed.load_state_dict(saved)
    assert resumed.metrics() == opt.metrics() and opt.metrics()["prodigy_d_0"] > 1e-6
    for k in range(4, 8):
        set_grads([a, b], targets, k)
        set_grads(copies, targets, k)
        opt.step()
        resumed.step()
    assert all(torch.equal(x, y) for x, y in zip((a, b), copies))
    assert resumed.metrics() == opt.metrics()


def test_settings_fail_naming_the_key():
    cases = {
        "--optim.prodigy.growth_rate=0.5": "optim.prodigy.growth_rate",
        "--optim.prodigy.d0=0": "optim.prodigy.d0",
        "--optim.prodigy.beta3=1.0": "optim.prodigy.beta3",
        "--optim.prodigy.hidden.norm=adamw": "optim.prodigy.hidden.norm",
        "--optim.prodigy.eps=-1": "optim.prodigy.eps",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate(load_config(SMOKE_PRODIGY, [override]))
    cfg = load_config(SMOKE_PRODIGY, ["--optim.prodigy.growth_rate=1.02", "--optim.prodigy.safeguard_warmup=true"])
    validate(cfg)
    assert cfg.optim.lr == 1.0 and cfg.optim.settings.d0 == 1e-6 and cfg.optim.settings.betas == (0.9, 0.999)


@pytest.mark.parametrize("config,name,matrices", [("smoke", "muon", "muon"), ("smoke_normuon", "normuon", "muon"),
                                                  ("smoke_shampoo", "shampoo", "shampoo")])
def test_prodigy_as_the_auxiliary_role_of(config, name, matrices):
    """Role norm "prodigy" in Muon, NorMuon and Shampoo: those roles take Prodigy steps (the others stay
    AdamW's), and metrics() reports their d, which grows from d0."""
    from model import GPT

    cfg = load_config(REPO / f"configs/{config}.toml", [
        *TINY, f"--optim.{name}.embed.norm=prodigy", f"--optim.{name}.embed.lr=1.0",
        f"--optim.{name}.head.norm=prodigy", f"--optim.{name}.head.lr=1.0"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model.params_by_role(), cfg.optim, torch.device("cpu"))
    algorithms = {g["role"]: g["algorithm"] for g in opt.param_groups}
    assert algorithms == {"embed": "prodigy", "hidden": matrices, "head": "prodigy", "scalar": "adamw"}
    assert opt.metrics() == {"prodigy_d_embed": 1e-6, "prodigy_d_head": 1e-6}
    x = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len))
    embed = model.params_by_role()["embed"][0]
    before = embed.detach().clone()
    for _ in range(3):
        model(x, x).backward()
        opt.step()
        opt.zero_grad()
    assert opt.metrics()["prodigy_d_head"] > 1e-6 and not torch.equal(before, embed)


def test_the_defaults_are_the_published_algorithm():
    """Prodigy with none of the options given follows the published algorithm (first increase uncapped, ε with
    the updated d), and ProdigyConfig's defaults are the same."""
    from optimizers.prodigy import ProdigyConfig

    assert not ProdigyConfig().cap_first_increase and not ProdigyConfig().eps_with_step_d
    (a,), (t,) = problem([(6, 4)])
    start = a.detach().clone()
    opt = Prodigy([a], lr=0.5, betas=(0.5, 0.9), eps=1e-3, d0=1e-3, growth_rate=1.2)
    for k in range(10):
        a.grad = a.detach() - t
        opt.step()
    expected, _ = reference_prodigy([start], lambda xs, k: [xs[0] - t], 10, lr=0.5, betas=(0.5, 0.9), eps=1e-3,
                                    d0=1e-3, wd=0.0, bias_correction=False, safeguard=False, growth=1.2)
    torch.testing.assert_close(a.detach(), expected[0], rtol=1e-10, atol=1e-12)
