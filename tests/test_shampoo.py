"""Shampoo: its update equations against a plain reference, its inverse roots, its settings, its
Prodigy roles, its state across a checkpoint, and its sharding across 2 gloo processes."""

import copy
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

import train_gpt
from common.errors import ConfigError
from optimizers.shampoo import Shampoo, inverse_root
from tests.test_distributed import ATOL, EPS, assert_same_weights, final_weights, torchrun
from tests.test_optimizers import grads_for, params
from tests.test_train import REPO, SMOKE, TINY
from training.config import load_config

F64 = torch.float64
SMOKE_SHAMPOO = str(REPO / "configs/smoke_shampoo.toml")


def matrix_power(A, power):
    """A^power by scipy's Schur–Padé algorithm: a reference independent of torch's eigh."""
    return torch.from_numpy(np.real(scipy.linalg.fractional_matrix_power(A.numpy(), power)))


def reference_shampoo(W, grads, lr, wd, b1, b2, f, power, eps, gb, geps, one_sided):
    """The module docstring's equations for one matrix, written out step by step."""
    W, M, L, R, V = W.clone(), 0.0, 0.0, 0.0, 0.0
    left = not one_sided or W.size(0) <= W.size(1)
    right = not one_sided or W.size(0) > W.size(1)
    for t, G in enumerate(grads, start=1):
        M = b1 * M + (1 - b1) * G
        M_hat = M / (1 - b1**t)
        L = b2 * L + (1 - b2) * G @ G.T
        R = b2 * R + (1 - b2) * G.T @ G
        if t % f == 0:
            L_root = matrix_power(L / (1 - b2**t) + eps * torch.eye(L.size(0), dtype=F64), power)
            R_root = matrix_power(R / (1 - b2**t) + eps * torch.eye(R.size(0), dtype=F64), power)
        V = gb * V + (1 - gb) * G**2
        A = M_hat / ((V / (1 - gb**t)).sqrt() + geps)
        if t < f:
            P = A
        else:
            P = (L_root if left else torch.eye(W.size(0), dtype=F64)) @ M_hat
            P = P @ (R_root if right else torch.eye(W.size(1), dtype=F64))
            P = P * A.norm() / P.norm()
        W = (1 - lr * wd) * W - lr * P
    return W


@pytest.mark.parametrize("one_sided, power", [(False, -0.25), (True, -0.5)])
def test_shampoo_update_equations(one_sided, power):
    """8 steps with momentum, factor averages, roots every 3 steps, Adam grafting and weight decay;
    a (2, 6, 4) parameter is a batch of two independent matrices."""
    shapes = [(8, 5), (5, 8), (2, 6, 4)]
    ps = params(*shapes)
    start = [p.detach().clone() for p in ps]
    hp = dict(lr=0.02, wd=0.1, b1=0.9, b2=0.95, f=3, power=power, eps=1e-12, gb=0.95, geps=1e-10)
    opt = Shampoo([{"params": ps, "weight_decay": hp["wd"]}], lr=hp["lr"], momentum=hp["b1"], factor_beta=hp["b2"],
                  power=power, one_sided=one_sided, precondition_frequency=hp["f"], epsilon=hp["eps"],
                  graft_beta2=hp["gb"], graft_eps=hp["geps"])
    history = [grads_for(ps, 10 + t) for t in range(8)]
    for grads in history:
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    for i, (p, w0) in enumerate(zip(ps, start)):
        mats = [(w0, [h[i] for h in history])] if w0.ndim == 2 else \
               [(w0[b], [h[i][b] for h in history]) for b in range(w0.size(0))]
        expected = torch.stack([reference_shampoo(w, gs, one_sided=one_sided, **hp) for w, gs in mats])
        torch.testing.assert_close(p.detach(), expected.view_as(p), rtol=1e-9, atol=1e-9)
    assert opt.param_groups[0]["step"] == 8


def spd(n, seed, low=1e-2, high=10.0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    values = torch.logspace(np.log10(low), np.log10(high), n, dtype=F64)
    return (Q * values) @ Q.T


@pytest.mark.parametrize("power", [-0.25, -0.5, -1.0])
def test_inverse_roots_eigh_and_newton_match_the_reference(power):
    A = torch.stack([spd(12, 0), spd(12, 1)])
    eps = 1e-6
    expected = torch.stack([matrix_power(a + eps * torch.eye(12, dtype=F64), power) for a in A])
    torch.testing.assert_close(inverse_root(A, power, eps, "eigh"), expected, rtol=1e-9, atol=1e-9)
    # newton adds a ridge of 1e-6·‖A‖_F to ε (see NEWTON_RIDGE); with the same ridge it is exact
    ridge = eps + 1e-6 * A.norm(dim=(-2, -1), keepdim=True)
    expected_ridged = torch.stack([matrix_power(a + r * torch.eye(12, dtype=F64), power) for a, r in zip(A, ridge)])
    torch.testing.assert_close(inverse_root(A, power, eps, "newton"), expected_ridged, rtol=1e-7, atol=1e-7)
    # float32 (what a GPU runs): close to the float64 result
    newton32 = inverse_root(A.float(), power, eps, "newton").double()
    assert ((newton32 - expected).norm() / expected.norm()) < 2e-3
    assert inverse_root(A.float(), power, eps).dtype == torch.float32


def test_inverse_root_of_a_singular_factor_stays_finite():
    g = torch.randn(6, 2, dtype=F64)
    root = inverse_root(g @ g.T, -0.25, 1e-12)  # rank 2 of 6; rounding leaves tiny negative eigenvalues
    assert torch.isfinite(root).all() and root.abs().max() <= 1e3 + 1


def test_before_the_first_roots_the_step_is_the_grafted_adam_step():
    """Steps 1..f-1 are Adam's (with Adam's bias-corrected momentum and V), as in Distributed Shampoo."""
    (p,) = params((6, 4))
    ref = torch.nn.Parameter(p.detach().clone())
    opt = Shampoo([p], lr=0.01, momentum=0.9, graft_beta2=0.95, graft_eps=1e-10, precondition_frequency=5)
    adam = torch.optim.Adam([ref], lr=0.01, betas=(0.9, 0.95), eps=1e-10)
    for t in range(4):
        g = grads_for([p], t)[0]
        p.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        adam.step()
    torch.testing.assert_close(p, ref)
    assert "left_root" in opt.state[p] and not opt.state[p]["left_root"].any()  # not computed yet


def test_state_dict_round_trip_continues_exactly():
    ps = params((8, 5), (3, 4, 4))
    opt = Shampoo(ps, lr=0.02, precondition_frequency=3)
    for t in range(4):
        for p, g in zip(ps, grads_for(ps, t)):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())  # as a checkpoint file: no tensors shared with opt
    copies = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    resumed = Shampoo(copies, lr=0.02, precondition_frequency=3)
    resumed.load_state_dict(saved)
    for t in range(4, 8):
        for a, b, g in zip(ps, copies, grads_for(ps, t)):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    for a, b in zip(ps, copies):
        assert torch.equal(a, b)
    assert set(saved["state"][0]) == {"momentum_buffer", "left", "right", "left_root", "right_root", "graft_sq"}


def test_settings_fail_naming_the_key():
    cases = {
        "--optim.shampoo.power=0.25": "optim.shampoo.power",
        "--optim.shampoo.precondition_frequency=0": "optim.shampoo.precondition_frequency",
        "--optim.shampoo.graft=adm": "did you mean 'adam'",
        "--optim.shampoo.root_method=newton --optim.shampoo.power=-0.3": "optim.shampoo.root_method",
        "--optim.shampoo.hidden.norm=adamw": "optim.shampoo.hidden.norm",
        "--optim.shampoo.factor_beta=1.0": "optim.shampoo.factor_beta",
    }
    from training.config import validate

    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate(load_config(SMOKE_SHAMPOO, overrides.split()))
    validate(load_config(SMOKE_SHAMPOO, ["--optim.shampoo.root_method=newton", "--optim.shampoo.power=-0.5"]))


def test_smoke_config_builds_shampoo():
    cfg = load_config(SMOKE_SHAMPOO)
    assert cfg.optim.name == "shampoo" and cfg.optim.settings.precondition_frequency >= 1


# ---------------------------------------------------------------------------------------------
# Sharded across 2 gloo processes: the weights of 1 process, and checkpoints that resume anywhere


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one_and_resume_from_their_checkpoint(tmp_path):
    """float64, same global batch: 2 ranks (each preconditions the matrices it owns) end where one
    process ends. Their step-4 checkpoint (factors and roots gathered from the owners) resumes on 2
    ranks to exactly the uninterrupted weights, and on 1 process to the same weights within ATOL.
    Roots are recomputed every 3 steps (8 steps), so the resumed runs reuse the step-3 roots and
    recompute at step 6.
    The auxiliary AdamW's ε is raised to 1e-6 (EPS's reason, tests/test_distributed.py): Shampoo's
    roots carry the ranks' different summation order (~1e-11 in the hidden weights) into the
    embedding's gradients, and AdamW at ε 1e-8 turns that into ~3e-8 in the embedding."""
    args = ["--optim.name=shampoo", "--optim.shampoo.precondition_frequency=3", "--schedule.steps=8",
            "--checkpoint.every=4", "--eval.every=0", "--data.micro_batch_size=2", "--model.dtype=float64", *EPS,
            "--optim.shampoo.adam_eps=1e-6"]
    out = torchrun(2, args, tmp_path, "many")
    assert out.returncode == 0, out.stderr[-3000:]
    assert train_gpt.main(["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", "--log.run_id=one", *args]) == 0
    many = final_weights(tmp_path / "many")
    assert_same_weights(many, final_weights(tmp_path / "one"), ATOL)

    for name, nproc in [("resumed2", 2), ("resumed1", 1)]:
        run = tmp_path / name
        shutil.copytree(tmp_path / "many", run)
        (run / "checkpoints" / "step_000008.pt").unlink()
        resume = [*args, f"--checkpoint.resume={run / 'checkpoints/step_000004.pt'}"]
        if nproc == 2:
            out = torchrun(2, resume, tmp_path, name)
            assert out.returncode == 0, out.stderr[-3000:]
        else:
            assert train_gpt.main(["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", *resume]) == 0
        assert "at step 4" in (run / "log.txt").read_text()
        assert_same_weights(many, final_weights(run), 0.0 if nproc == 2 else ATOL)
