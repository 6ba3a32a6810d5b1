"""[constraint] in training (training/constrain.py): the constraints hold after every step, the Lipschitz
config trains without norms, the bound is logged, checkpoints resume exactly, several processes end with
the weights of one, and impossible settings fail at start-up naming the key."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import train_gpt
from common.errors import ConfigError
from distributed.process_group import DistInfo
from tests.test_distributed import ATOL, EPS, assert_same_weights, final_weights, torchrun
from tests.test_train import TINY
from training.config import load_config, validate
from training.constrain import row_rms_cap_, unit_update_norm
from training.run_data import prepare_data
from training.run_dir import read_metrics
from training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
LIPSCHITZ = str(REPO / "configs/lipschitz_smoke.toml")
TOY = ["--model.width=64", "--model.heads=2", "--model.depth=2", "--model.seq_len=128", "--model.window=96",
       "--model.window_pattern=LS", "--data.batch_tokens=1024", "--data.micro_batch_size=4", "--eval.tokens=4096",
       "--eval.interval_tokens=4096", "--log.every=1", "--optim.muon.momentum_warmup_steps=4"]
# The tolerance on sigma_max <= beta after a step. The caps act on the whole spectrum: measured within 1e-6
# (fp32). spectral_normalize divides by the power iteration's estimate, which approaches sigma_max from below
# and lags when a step turns the top singular vectors (a flat top of the spectrum, AdamW's dense steps): with
# the default 2 warm iterations per step it measured up to 1.18 x beta here (AdamW, lr 0.002, 7 steps), with 8
# up to 1.033 x, so it is tested with 8 (constraint.power_iters_warm) against 5%.
# (The spectral hammer is no bound: it moves only the top singular value, and a step that lifts two above beta
# leaves the second there - measured 1.22 x beta after 3 AdamW steps at lr 0.01 - so it is not tested here.)
TOLERANCE = {"spectral_soft_cap": 1e-3, "spectral_hard_cap": 1e-3, "spectral_normalize": 5e-2}


def trainer(tmp_path, *overrides) -> Trainer:
    cfg = load_config(LIPSCHITZ, [*TOY, f"--log.dir={tmp_path}", *overrides])
    validate(cfg)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    t = Trainer(cfg, info)
    t.build(prepare_data(cfg, info, lambda _: None).train_files)
    return t


def norms(t: Trainer) -> dict:
    """The constrained norm of every matrix: RMS->RMS (shape_scaled) for hidden and head, row RMS for the
    embedding (its largest), each divided by its max_norm."""
    c, roles, out = t.cfg.constraint, t.model.params_by_role(), {}
    for role, beta in (("hidden", c.max_norm), ("head", c.head.max_norm)):
        for i, w in enumerate(roles[role]):
            s = torch.linalg.matrix_norm(w.detach().double(), ord=2)
            scale = (w.size(-1) / w.size(-2)) ** 0.5 if c.shape_scaled else 1.0
            out[f"{role}{i}"] = (s * scale).max().item() / beta
    out["embed"] = t.model.embed.weight.detach().double().square().mean(-1).sqrt().max().item() / c.embed.max_norm
    return out


@pytest.mark.parametrize("optim, method, extra", [
    ("muon", "spectral_soft_cap", ()),
    ("muon", "spectral_hard_cap", ()),
    ("adamw", "spectral_normalize", ("--optim.lr=0.002", "--constraint.power_iters_warm=8")),
    ("adamw", "spectral_hard_cap", ("--optim.lr=0.01", "--constraint.shape_scaled=false")),
])
def test_constraints_hold_after_every_step(tmp_path, optim, method, extra):
    """Every constrained matrix ends every step inside its ball: sigma_max <= beta (x 1 + its TOLERANCE), and the
    embedding's rows have RMS <= max_norm. max_norm 0.5 is below where the weights go on their own (the
    first steps push sigma above it), so the constraint does work in every step."""
    t = trainer(tmp_path, f"--optim.name={optim}", f"--constraint.method={method}", "--constraint.max_norm=0.5",
                "--constraint.head.max_norm=0.5", *extra)
    tol = TOLERANCE[method]
    assert max(norms(t).values()) <= 1 + tol  # at_init: the initial weights are inside too
    apply, outside = t.constrain.apply, []

    def spy(lr):  # the norms the optimizer step left, before the constraint brings them back
        outside.append(max(norms(t).values()))
        apply(lr)

    t.constrain.apply = spy
    for step in range(6):
        t.step(step)
        after = norms(t)
        assert max(after.values()) <= 1 + tol, (step, after)
    assert sum(n > 1 + tol for n in outside) >= 3, outside  # the steps left the ball: the constraint worked


@pytest.mark.slow
def test_the_lipschitz_config_trains_without_norms_and_logs_its_bound(tmp_path):
    """No RMSNorm, no QK-norm, no soft cap: the loss falls, nothing is NaN, and every validation logs the
    bound (which the constraints keep small) and every matrix's sigma_max."""
    code = train_gpt.main(["--config", LIPSCHITZ, *TOY, f"--log.dir={tmp_path}", "--log.run_id=lip",
                           "--schedule.steps=30", "--eval.every=10", "--checkpoint.every=0"])
    assert code == 0
    rows = [r for r in read_metrics(tmp_path / "lip") if "val_loss" in r]
    losses = [r["val_loss"] for r in rows]
    assert losses[0] == pytest.approx(6.9315, abs=1e-3) and losses[-1] < losses[0] - 1.5, losses
    assert all(torch.isfinite(torch.tensor(losses)))
    assert rows[0]["lipschitz_bound"] == 0.0  # zero-initialized head: constant logits
    assert all(0 < r["lipschitz_bound"] < 100 and r["sigma.b1.fc"] > 0 for r in rows[1:])
    summary = json.loads((tmp_path / "lip" / "summary.json").read_text())
    assert summary["lipschitz_bound"] == rows[-1]["lipschitz_bound"]
    log = (tmp_path / "lip" / "log.txt").read_text()
    assert "lipschitz:" in log and "Lipschitz bound logged at every validation" in log


def test_resume_is_exact(tmp_path):
    """The soft cap's power-iteration vectors are in the checkpoint: a run resumed from step 4 ends with the
    same weights, losses and bounds as the uninterrupted run."""
    args = ["--config", LIPSCHITZ, *TOY, f"--log.dir={tmp_path}", "--schedule.steps=8", "--eval.every=4",
            "--checkpoint.every=4"]
    assert train_gpt.main([*args, "--log.run_id=full"]) == 0
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    state = torch.load(tmp_path / "resumed/checkpoints/step_000004.pt", weights_only=True)
    assert state["constraint"]["hidden"]["vectors"]  # the soft cap's (the head's hard cap keeps none)
    assert train_gpt.main([*args, f"--checkpoint.resume={tmp_path / 'resumed/checkpoints/step_000004.pt'}"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_time_ms"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(tmp_path / "resumed"))
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one(tmp_path):
    """gloo, float64, the same global batch: the owners constrain (Muon's sharded hidden matrices by their
    chunk owner, the AdamW-trained head round-robin) and gather; the result is the single process's."""
    args = ["--optim.name=muon", "--constraint.method=spectral_soft_cap", "--constraint.max_norm=0.5",
            "--constraint.shape_scaled=true", "--constraint.head.method=spectral_hard_cap",
            "--constraint.head.max_norm=2.0", "--constraint.embed.method=row_rms_cap", "--checkpoint.every=0",
            "--eval.every=0", "--data.micro_batch_size=2", "--model.dtype=float64", *EPS]
    out = torchrun(2, args, tmp_path, "many")
    assert out.returncode == 0, out.stderr[-3000:]
    one = ["--config", str(REPO / "configs/smoke.toml"), *TINY, f"--log.dir={tmp_path}", "--log.run_id=one", *args]
    assert train_gpt.main(one) == 0
    assert_same_weights(final_weights(tmp_path / "many"), final_weights(tmp_path / "one"), ATOL)
    many, single = torch.load(sorted((tmp_path / "many/checkpoints").glob("*.pt"))[-1], weights_only=True), \
        torch.load(sorted((tmp_path / "one/checkpoints").glob("*.pt"))[-1], weights_only=True)
    for role in ("hidden", "head"):  # the vectors gathered from their owners: the single-process layout
        a, b = many["constraint"][role]["vectors"], single["constraint"][role]["vectors"]
        assert a.keys() == b.keys() and all(torch.allclose(a[i], b[i], atol=1e-6) for i in a)


@pytest.mark.parametrize("overrides, key", [
    (["--constraint.method=spectral_cap"], "constraint.method"),
    (["--constraint.head.method=row_rms_cap"], "constraint.head.method"),
    (["--constraint.embed.method=spectral_normalize"], "constraint.embed.method"),
    (["--constraint.method=hyperball"], "constraint.method = 'hyperball'"),
    (["--constraint.head.method=hyperball"], "constraint.head.method = 'hyperball'"),
    (["--optim.name=adamw", "--constraint.method=spectral_soft_cap"], "constraint.update_norm > 0"),
    (["--constraint.head.method=spectral_soft_cap"], "constraint.head.update_norm > 0"),
    (["--optim.lr=0.3"], "0.3065 x"),  # 0.3 x 1.2 / 1 > 0.3065
    (["--constraint.max_norm=0"], "constraint.max_norm must be positive"),
    (["--constraint.power_iters=0"], "constraint.power_iters"),
    (["--constraint.log_bound=sometimes"], "constraint.log_bound"),
])
def test_impossible_settings_fail_at_start_up_naming_the_key(overrides, key):
    cfg = load_config(LIPSCHITZ, overrides)
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(cfg)


def test_update_norm_and_row_cap():
    """Muon's update per unit lr: s(m, n) x overshoot, in RMS->RMS units over sqrt(m/n); an explicit value
    wins; the row cap scales only the rows above max_norm."""
    assert unit_update_norm(0.0, ("spectral", 1.0), 1.2, (1024, 256), True) == pytest.approx(1.2)
    assert unit_update_norm(0.0, ("muon", 1.0), 1.2, (256, 1024), True) == pytest.approx(2.4)
    assert unit_update_norm(0.0, ("muon", 1.0), 1.2, (1024, 256), False) == pytest.approx(2.4)
    assert unit_update_norm(0.0, ("spectral", 0.5), 1.2, (1024, 256), True) == pytest.approx(0.6)  # Scion, radius 0.5
    assert unit_update_norm(0.5, None, 1.2, (4, 4), True) == 0.5
    assert unit_update_norm(0.0, None, 1.2, (4, 4), True) is None
    table = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # row RMS 3.54 and 0.354
    row_rms_cap_(table, 1.0)
    assert table[0].square().mean().sqrt().item() == pytest.approx(1.0)
    assert table[1].tolist() == pytest.approx([0.3, 0.4])


def test_the_lipschitz_figure_reads_a_sweep(tmp_path):
    """scripts/studies/lipschitz_plot.py: one point per finished run (accuracy against log10 bound), the
    runs without a result named, a headline per curve; records.py add-study keeps it (no checkpoints)."""
    from scripts.studies.lipschitz_plot import main
    from scripts.studies.spec import load_spec, plan_runs

    spec_path = REPO / "configs/sweeps/lipschitz_shakespeare.toml"
    runs = plan_runs(load_spec(spec_path))
    root = tmp_path / "sweeps" / "lipschitz_shakespeare" / "runs"
    for i, run in enumerate(runs[:-1]):
        (root / run.run_id / "checkpoints").mkdir(parents=True)
        (root / run.run_id / "checkpoints" / "step_000300.pt").write_text("x")
        (root / run.run_id / "summary.json").write_text(json.dumps(
            {"status": "completed", "final_val_accuracy": 0.3 + 0.01 * i, "final_val_loss": 2.0,
             "lipschitz_bound": 10.0 ** (i % 5), "log10_lipschitz_bound": float(i % 5), "train_time_ms": 1000}))
    assert main(["--spec", str(spec_path), "--out", str(tmp_path / "sweeps")]) == 0
    folder = tmp_path / "sweeps" / "lipschitz_shakespeare"
    assert (folder / "lipschitz.png").stat().st_size > 10_000
    table = (folder / "lipschitz.csv").read_text().splitlines()
    assert len(table) == len(runs) + 1 and table[-1].count("pending") == 1
    headline = json.loads((folder / "lipschitz.json").read_text())["headline"]
    assert headline.startswith("best val accuracy") and "muon+spectral_hard_cap" in headline
    from scripts.records.book import add_study

    record = add_study(folder, "cpu-test", "lipschitz", "sweep", root=tmp_path / "rec", extra_files=(spec_path,))
    assert (record / "lipschitz_shakespeare.toml").is_file() and (record / "lipschitz.png").is_file()
    assert (record / "runs" / runs[0].run_id / "summary.json").is_file()
    assert not list(record.rglob("*.pt"))
