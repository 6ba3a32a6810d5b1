"""NorMuon: its update equations against a plain reference (track-3 result #10's), what its
normalization does to the rows, its state across a checkpoint, its settings, and its sharding
across 2 gloo processes."""

import copy

import pytest
import torch

import train_gpt
from common.errors import ConfigError
from optimizers import Muon, orthogonalize
from optimizers.muon import shape_scale
from optimizers.normuon import NorMuon
from tests.test_distributed import ATOL, assert_same_weights, final_weights, torchrun
from tests.test_optimizers import grads_for, params
from tests.test_train import REPO, SMOKE, TINY
from training.config import load_config, validate

F64 = torch.float64
SMOKE_NORMUON = str(REPO / "configs/smoke_normuon.toml")


def reference_normuon(W, grads, lr, wd, mu, beta2, eps, rows):
    """#10's normuon_update for one matrix, step by step (exact orthogonalization)."""
    M, v = torch.zeros_like(W), 0.0
    for G in grads:
        M = mu * M + (1 - mu) * G
        D = (1 - mu) * G + mu * M  # Nesterov
        U = orthogonalize(D, "svd") * max(1, W.size(0) / W.size(1)) ** 0.5
        v = beta2 * v + (1 - beta2) * (U**2).mean(dim=1 if rows else 0, keepdim=True)
        U_hat = U / v.clamp_min(eps).sqrt()
        W = (1 - lr * wd) * W - lr * U_hat * (U.norm() / U_hat.norm())
    return W


@pytest.mark.parametrize("normalize", ["auto", "rows", "columns"])
def test_normuon_update_equations(normalize):
    shapes = [(8, 5), (5, 8), (2, 6, 4)]
    ps = params(*shapes)
    start = [p.detach().clone() for p in ps]
    opt = NorMuon([{"params": ps, "weight_decay": 0.1}], lr=0.05, momentum=0.9, nesterov=True, orthogonalize="svd",
                  beta2=0.9, normalize=normalize)
    history = [grads_for(ps, t) for t in range(4)]
    for grads in history:
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    for i, (p, w0) in enumerate(zip(ps, start)):
        rows = normalize == "rows" or (normalize == "auto" and w0.size(-2) >= w0.size(-1))
        mats = [(w0, [h[i] for h in history])] if w0.ndim == 2 else \
               [(w0[b], [h[i][b] for h in history]) for b in range(w0.size(0))]
        expected = torch.stack([reference_normuon(w, gs, 0.05, 0.1, 0.9, 0.9, 1e-10, rows) for w, gs in mats])
        torch.testing.assert_close(p.detach(), expected.view_as(p), rtol=1e-10, atol=1e-10)


def test_without_averaging_the_rows_are_evened_out_and_muons_norm_is_kept():
    """β2 = 0: every row of the step has the same norm, and the step has Muon's Frobenius norm."""
    ps, ref = params((9, 5)), params((9, 5))
    normuon = NorMuon(ps, lr=0.1, momentum=0.0, nesterov=False, orthogonalize="svd", beta2=0.0, normalize="rows")
    muon = Muon(ref, lr=0.1, momentum=0.0, nesterov=False, orthogonalize="svd")
    before, g = ps[0].detach().clone(), grads_for(ps, 1)[0]
    ps[0].grad, ref[0].grad = g.clone(), g.clone()
    normuon.step()
    muon.step()
    step, muon_step = ps[0].detach() - before, ref[0].detach() - before
    row_norms = step.norm(dim=1)
    torch.testing.assert_close(row_norms, row_norms.mean().expand_as(row_norms), rtol=1e-10, atol=0)
    assert muon_step.norm(dim=1).std() > 1e-3  # Muon's rows of a tall U Vᵀ are uneven
    torch.testing.assert_close(step.norm(), muon_step.norm(), rtol=1e-12, atol=0)
    assert muon_step.norm().item() == pytest.approx(0.1 * shape_scale("muon", 9, 5) * 5**0.5, rel=1e-12)


def test_state_dict_round_trip_continues_exactly():
    ps = params((8, 5), (3, 4, 6))
    opt = NorMuon(ps, lr=0.05)
    for t in range(3):
        for p, g in zip(ps, grads_for(ps, t)):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())  # as a checkpoint file: no tensors shared with opt
    assert saved["state"][1]["second_moment"].shape == (3, 1, 6)  # wide: one number per column
    copies = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    resumed = NorMuon(copies, lr=0.05)
    resumed.load_state_dict(saved)
    for t in range(3, 6):
        for a, b, g in zip(ps, copies, grads_for(ps, t)):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, copies))


def test_settings_fail_naming_the_key():
    cases = {
        "--optim.normuon.normalize=row": "did you mean 'rows'",
        "--optim.normuon.beta2=1.0": "optim.normuon.beta2",
        "--optim.normuon.normalize_eps=0": "optim.normuon.normalize_eps",
        "--optim.normuon.embed.norm=spectral": "optim.normuon.embed.norm",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate(load_config(SMOKE_NORMUON, [override]))
    s = load_config(SMOKE_NORMUON).optim
    assert s.lr == 0.035 and s.settings.hidden.weight_decay == 0.025 and s.settings.beta2 == 0.95


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one(tmp_path):
    """float64, same global batch; with a checkpoint mid-run (the second moments are gathered)."""
    args = ["--optim.name=normuon", "--checkpoint.every=4", "--eval.every=0", "--data.micro_batch_size=2",
            "--model.dtype=float64", "--optim.normuon.adam_eps=1e-8"]
    out = torchrun(2, args, tmp_path, "many")
    assert out.returncode == 0, out.stderr[-3000:]
    assert train_gpt.main(["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", "--log.run_id=one", *args]) == 0
    assert_same_weights(final_weights(tmp_path / "many"), final_weights(tmp_path / "one"), ATOL)
    state = torch.load(tmp_path / "many/checkpoints/step_000004.pt", weights_only=True)["optimizer"]["state"]
    assert sum("second_moment" in s for s in state.values()) == 8  # every hidden matrix's, gathered
