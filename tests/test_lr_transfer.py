"""Learning-rate transfer across width: "grid steps the best lr moves per doubling of width" in the
sweep results (scripts/studies/results.py) against hand-computed cases, CPU slots of the sweep runner,
the shipped Shakespeare transfer spec, and a 2-width sweep of the real trainer on a tiny made-up text
kept as a study record (python -m scripts.records add-study)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.config_io import toml_value
from data import shakespeare
from scripts.records import cli as records_cli
from scripts.studies import results, runner, sweep
from scripts.studies import spec as plan
from scripts.studies.runner import Slot
from scripts.studies.spec import PlotSpec, SpecError
from training.config import load_config, validate

REPO = Path(__file__).resolve().parents[1]


def rows_for(best: dict, grid: list[float], seeds=(0, 1), opt="muon") -> list[dict]:
    """Sweep rows whose loss is a bowl in log2(lr) around best[width]."""
    return [{"optim.name": opt, "model.width": w, "optim.lr": lr, "seed": s, "status": "completed",
             "diverged": False, "final_val_loss": 2 + math.log2(lr / b) ** 2 / 10 + s / 100 + 1 / w}
            for w, b in best.items() for lr in grid for s in seeds]


def test_lr_shift_hand_cases():
    grid = [0.005, 0.01, 0.02, 0.04, 0.08]
    rows = rows_for({64: 0.04, 128: 0.02, 256: 0.01}, grid, opt="adamw")  # halves per doubling
    rows += rows_for({64: 0.02, 128: 0.02, 256: 0.02}, grid, opt="muon")  # stays put
    rows += rows_for({64: 0.02, 128: 0.04, 256: 0.08}, grid, opt="scion")  # doubles, ends on the edge
    shift = results.lr_shift(rows, PlotSpec())
    assert shift["adamw"]["steps_per_doubling"] == pytest.approx(-1.0)
    assert shift["muon"]["steps_per_doubling"] == pytest.approx(0.0)
    assert shift["scion"]["steps_per_doubling"] == pytest.approx(1.0)
    assert {w: b["x"] for w, b in shift["adamw"]["best"].items()} == {64: 0.04, 128: 0.02, 256: 0.01}
    assert shift["adamw"]["best"][64]["loss"] == pytest.approx(2 + 0.005 + 1 / 64)  # the mean over the 2 seeds
    assert shift["adamw"]["edge"] == [] and shift["scion"]["edge"] == [256]
    assert shift["adamw"]["grid_ratio"] == pytest.approx(2.0)


def test_lr_shift_in_grid_steps_and_fit():
    grid = [0.01, 0.04, 0.16, 0.64]  # factors of 4: a slope of -2 in log2 is one grid step per doubling
    shift = results.lr_shift(rows_for({64: 0.64, 128: 0.16, 256: 0.04}, grid), PlotSpec())
    assert shift["muon"]["slope_log2"] == pytest.approx(-2.0)
    assert shift["muon"]["steps_per_doubling"] == pytest.approx(-1.0)
    # least squares through three points: best lrs 0.02, 0.02, 0.04 at widths 64, 128, 256: slope 1/2 in log2
    shift = results.lr_shift(rows_for({64: 0.02, 128: 0.02, 256: 0.04}, [0.01, 0.02, 0.04, 0.08]), PlotSpec())
    assert shift["muon"]["slope_log2"] == pytest.approx(0.5)
    one = results.lr_shift(rows_for({64: 0.02}, [0.01, 0.02, 0.04]), PlotSpec())
    assert one["muon"]["slope_log2"] is None and one["muon"]["steps_per_doubling"] is None
    assert results.lr_shift(rows_for({64: 0.02}, [0.01, 0.02]), PlotSpec(curves="optim.name")) == {}  # not widths


def test_diverged_and_failed_points(tmp_path):
    grid = [0.01, 0.02, 0.04]
    rows = rows_for({64: 0.04, 128: 0.04}, grid, seeds=(0,))
    for r in rows:  # width 128 diverges at 0.04: its best is 0.02, bracketed by the diverged point (not an edge)
        if r["model.width"] == 128 and r["optim.lr"] == 0.04:
            r.update(status="diverged", diverged=True, final_val_loss=math.nan)
    rows.append({"optim.name": "muon", "model.width": 128, "optim.lr": 0.08, "seed": 0, "status": "failed",
                 "diverged": False, "final_val_loss": None})
    shift = results.write_transfer(rows, PlotSpec(), tmp_path, title="t")
    assert shift["muon"]["best"][128]["x"] == 0.02 and shift["muon"]["edge"] == [64]
    assert shift["muon"]["steps_per_doubling"] == pytest.approx(-1.0)
    text = (tmp_path / "transfer.md").read_text()
    assert "| muon | 0.04 (" in text and "EDGE" in text and "-1.00" in text
    data = json.loads((tmp_path / "transfer.json").read_text())
    assert data["shift"]["muon"]["best"]["128"]["x"] == 0.02 and "muon -1.00 (edge)" in data["headline"]


def test_cpu_slots(monkeypatch):
    monkeypatch.delenv(runner.CPU_SLOTS_ENV, raising=False)
    assert runner.make_slots([], 1) == [Slot()]
    assert runner.make_slots([], 1, cpu_slots=2) == [Slot(), Slot()]
    monkeypatch.setenv(runner.CPU_SLOTS_ENV, "2")
    assert len(runner.make_slots([], 1)) == 2 and runner.make_slots(["0"], 1) == [Slot(("0",))]  # GPUs win
    monkeypatch.setenv(runner.CPU_SLOTS_ENV, "two")
    with pytest.raises(SpecError, match="SWEEP_CPU_SLOTS"):
        runner.make_slots([], 1)
    with pytest.raises(SpecError, match="must be >= 1"):
        runner.make_slots([], 1, cpu_slots=0)


def test_shakespeare_transfer_spec():
    spec = plan.load_spec(REPO / "configs/sweeps/lr_transfer_shakespeare.toml")
    runs = plan.plan_runs(spec)
    assert {r.values["label.optimizer"] for r in runs} == {"muon", "scion", "scion_colnorm", "adamw"}
    assert {r.values["model.width"] for r in runs} == {64, 128, 256, 512} and {r.values["seed"] for r in runs} == {0, 1}
    for opt in ("muon", "scion", "scion_colnorm", "adamw"):
        lrs = sorted({r.values["optim.lr"] for r in runs if r.values["label.optimizer"] == opt})
        assert len(lrs) == 5 and all(b / a == pytest.approx(2.0) for a, b in zip(lrs, lrs[1:]))  # factors of 2
    for r in runs:
        cfg = load_config(spec.base_path, list(r.overrides))
        validate(cfg)
        assert cfg.model.heads * cfg.model.head_dim == cfg.model.width and not cfg.data.synthetic
        assert cfg.checkpoint.every == 0 and not cfg.checkpoint.final
        assert cfg.optim.name == r.values["label.optimizer"].split("_")[0]
        if r.values["label.optimizer"] == "scion_colnorm":
            roles = cfg.optim.settings.roles()
            assert (roles["embed"].norm, roles["hidden"].norm, roles["head"].norm) == \
                ("colnorm", "spectral", "colnorm_normalized")


def tiny_text(out: Path) -> int:
    """Made-up plays as character shards (data/shakespeare.py); returns the vocabulary size."""
    rng = np.random.default_rng(1)
    words = ["king", "queen", "love", "death", "night", "crown", "sword", "heart", "fool", "ghost"]
    plays = [shakespeare.Document(f"play{i}", f"Play {i}", "\n".join(
        f"{'ABC'[j % 3]}. " + " ".join(rng.choice(words, 6)) for j in range(60))) for i in range(4)]
    return shakespeare.prepare(plays[:3], plays[3:], str(out))["vocab_size"]


def test_two_width_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    """AdamW at widths 32 and 64 x 2 learning rates, 2 runs at once on the CPU; transfer.md's number
    is the slope recomputed from results.csv; the folder becomes a study record."""
    vocab = tiny_text(tmp_path / "text")
    monkeypatch.setenv(runner.CPU_SLOTS_ENV, "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = {"data.synthetic": False, "data.train_files": str(tmp_path / "text/shakespeare_train_*.bin"),
                 "data.val_files": str(tmp_path / "text/shakespeare_val_*.bin"), "model.vocab_size": vocab,
                 "model.eot_token": 0, "model.head_dim": 32, "model.depth": 1, "model.seq_len": 64,
                 "data.batch_tokens": 128, "eval.tokens": 256, "eval.every": 0, "schedule.steps": 4,
                 "checkpoint.every": 0, "checkpoint.final": False}
    spec = tmp_path / "tiny.toml"
    spec.write_text("\n".join([
        'name = "tiny_transfer"', f'base = "{REPO / "configs/track3_tiny.toml"}"', "[overrides]",
        *(f'"{k}" = {toml_value(v)}' for k, v in overrides.items()),
        "[axes]", '"optim.name" = ["adamw"]', '"model.width" = [32, 64]', '"optim.lr" = [0.004, 0.016]',
        '[extra."model.width"]', '32 = { "model.heads" = 1 }', '64 = { "model.heads" = 2 }',
    ]))
    assert sweep.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--gpus", "none"]) == 0
    assert "4 to run on 2 slot(s) (CPU, CPU)" in capsys.readouterr().out
    root = tmp_path / "sweeps/tiny_transfer"
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    best = {w: min((r for r in rows if r["model.width"] == w), key=lambda r: float(r["final_val_loss"]))["optim.lr"]
            for w in ("32", "64")}
    expected = math.log2(float(best["64"])) - math.log2(float(best["32"]))  # two widths: the slope is the difference
    data = json.loads((root / "transfer.json").read_text())
    assert data["shift"]["adamw"]["steps_per_doubling"] == pytest.approx(expected / 2)  # the grid is in factors of 4
    assert f"adamw {expected / 2:+.2f}" in (root / "transfer.md").read_text()
    assert records_cli.main(["--root", str(tmp_path / "records"), "add-study", str(root), "--track", "cpu-test",
                         "--name", "tiny transfer", "--spec", str(spec), "--date", "2026-01-02"]) == 0
    record = tmp_path / "records/cpu-test/2026-01-02_tiny-transfer"
    assert (record / "tiny.toml").is_file() and (record / "lr_transfer.png").is_file()
    assert len(list((record / "runs").iterdir())) == 4
    first_run = next((record / "runs").iterdir())
    assert {p.name for p in first_run.iterdir()} == {"config.toml", "log.txt", "metrics.jsonl", "summary.json"}
    info = json.loads((record / "record.json").read_text())
    assert info["headline"] == data["headline"] and info["kind"] == "sweep" and info["runs"] == 4
    readme = (tmp_path / "records/README.md").read_text()
    assert "[tiny-transfer](cpu-test/2026-01-02_tiny-transfer/)" in readme and "No records yet" not in readme
