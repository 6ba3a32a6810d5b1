"""scripts/studies/sweep.py and scripts/sweeps/: specs and plans, GPU slots and launch commands, the scheduler (with a fake
training script and fake GPU ids), resuming and retrying, the CSV and the figure, and a tiny real
sweep of the smoke model end to end."""

import csv
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from common.config_io import toml_value
from scripts.studies import results, runner, sweep
from scripts.studies import spec as plan
from scripts.studies.runner import Slot, SweepDir
from scripts.studies.spec import PlotSpec, SpecError
from training.config import load_config, validate

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SPECS = sorted((REPO / "configs/sweeps").glob("*.toml"))


def write_spec(tmp_path: Path, body: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# ----------------------------------------------------------------------------------------------
# Specs and plans


def test_shipped_specs_plan(tmp_path):
    assert {p.name for p in SHIPPED_SPECS} >= {"smoke.toml", "lr_transfer_fineweb.toml"}
    for path in SHIPPED_SPECS:
        spec = plan.load_spec(path)
        runs = plan.plan_runs(spec)
        assert spec.base_path.is_file(), spec.base
        assert len({r.run_id for r in runs}) == len(runs)
        assert sweep.describe_plan(spec, SweepDir(tmp_path / spec.name), runs,
                                   {r.run_id: "pending" for r in runs}, [Slot()], False)
        for run in runs:  # every run's config is one the trainer accepts (keys, values, combinations)
            validate(load_config(spec.base_path, list(run.overrides)), world_size=spec.gpus_per_run)


def test_smoke_spec_plan():
    spec = plan.load_spec(REPO / "configs/sweeps/smoke.toml")
    runs = plan.plan_runs(spec)
    assert len(runs) == 2 * 2 * 3
    by_id = {r.run_id: r for r in runs}
    run = by_id["name-adamw_width-128_lr-0.016_seed-0"]
    assert run.values == {"optim.name": "adamw", "model.width": 128, "optim.lr": 0.016, "seed": 0}
    assert '--optim.name="adamw"' in run.overrides and "--model.heads=4" in run.overrides
    assert "--schedule.steps=150" in run.overrides
    muon_lrs = {r.values["optim.lr"] for r in runs if r.values["optim.name"] == "muon"}
    adamw_lrs = {r.values["optim.lr"] for r in runs if r.values["optim.name"] == "adamw"}
    assert muon_lrs.isdisjoint(adamw_lrs)  # per-optimizer grids


def test_fineweb_spec_plan():
    spec = plan.load_spec(REPO / "configs/sweeps/lr_transfer_fineweb.toml")
    runs = plan.plan_runs(spec)
    assert {r.values["optim.name"] for r in runs} == {"muon", "scion", "adamw"}
    assert {r.values["model.width"] for r in runs} == {256, 512, 768, 1024}
    for r in runs:  # head_dim 128 everywhere: heads = width / 128
        assert f"--model.heads={r.values['model.width'] // 128}" in r.overrides


def test_run_ids_are_readable_and_filesystem_safe(tmp_path):
    spec = plan.load_spec(write_spec(tmp_path, """
        base = "configs/smoke.toml"
        [axes]
        model.width = [64]
        "optim.lr" = [0.000244140625, 1e-05]
        "model.window_pattern" = ["L S/x"]
    """))
    ids = [r.run_id for r in plan.plan_runs(spec)]
    assert ids == ["width-64_lr-0.000244140625_window_pattern-L_S_x", "width-64_lr-1e-05_window_pattern-L_S_x"]
    assert ids == [r.run_id for r in plan.plan_runs(spec)]  # deterministic


@pytest.mark.parametrize("body, message", [
    ('base = "b.toml"\n[axes]\n"optim.lr" = { by = "optim.name", muon = [1] }\n"optim.name" = ["muon"]',
     "must name an axis listed before"),
    ('base = "b.toml"\n[axes]\n"optim.name" = ["muon", "scion"]\n"optim.lr" = { by = "optim.name", muon = [1] }',
     "no values for optim.name = scion"),
    ('base = "b.toml"\n[overrides]\n"log.dir" = "x"\n[axes]\n"optim.lr" = [1]', "set by the sweep"),
    ('base = "b.toml"\n[overrides]\n"optim.lr" = 1\n[axes]\n"optim.lr" = [1]', "is an axis and also"),
    ('base = "b.toml"\n[axes]\n"optim.lr" = [1]\n[extra."model.width"]\n64 = { "model.heads" = 2 }', "not an axis"),
    ('base = "b.toml"\n[axes]\n"optim.lr" = [1, 1]', "two runs get the id"),
    ('base = "b.toml"\n[axes]\n"optim.lr" = []', "empty list"),
    ('base = "b.toml"\nbogus = 1\n[axes]\n"optim.lr" = [1]', "unknown key"),
    ('base = "b.toml"\n[axes]\n"model.width" = [1]', "plot.x"),
])
def test_spec_errors(tmp_path, body, message):
    with pytest.raises(SpecError, match=message):
        plan.plan_runs(plan.load_spec(write_spec(tmp_path, body)))


# ----------------------------------------------------------------------------------------------
# Slots and launch commands


def test_make_slots():
    gpus = ["0", "1", "2", "3"]
    assert runner.make_slots(gpus, 1) == [Slot(("0",)), Slot(("1",)), Slot(("2",)), Slot(("3",))]
    assert runner.make_slots(gpus, 2) == [Slot(("0", "1")), Slot(("2", "3"))]
    assert runner.make_slots(gpus, 3) == [Slot(("0", "1", "2"))]  # the fourth GPU stays idle
    assert runner.make_slots([], 2) == [Slot()]  # CPU: one run after another
    with pytest.raises(SpecError, match="only 4 GPU"):
        runner.make_slots(gpus, 8)
    packed = runner.make_slots(["0", "1"], 1, runs_per_gpu=3)  # 3 runs at once on each GPU, spread over both
    assert packed == [Slot(("0",), 0), Slot(("1",), 0), Slot(("0",), 1), Slot(("1",), 1), Slot(("0",), 2),
                      Slot(("1",), 2)]
    assert str(packed[2]) == "GPU 0 #1" and str(packed[0]) == "GPU 0"
    with pytest.raises(SpecError, match="runs_per_gpu must be >= 1"):
        runner.make_slots(gpus, 1, runs_per_gpu=0)
    assert runner.parse_gpus("4, 5") == ["4", "5"] and runner.parse_gpus("none") == []


def test_detect_gpus_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert runner.detect_gpus() == ["2", "3"]  # a run on "0" would otherwise escape to physical GPU 0


def test_launch_command(tmp_path):
    spec = plan.load_spec(REPO / "configs/sweeps/smoke.toml")
    run = plan.plan_runs(spec)[0]
    sd = SweepDir(tmp_path / "smoke")
    cmd, env = runner.launch_command(run, spec, sd, Slot(("5",)), Path("train.py"), resume=False)
    assert cmd[:2] == [sys.executable, "train.py"] and env["CUDA_VISIBLE_DEVICES"] == "5"
    assert f"--log.dir={sd.runs}" in cmd and f"--log.run_id={run.run_id}" in cmd
    assert "--checkpoint.resume=latest" not in cmd
    cmd, env = runner.launch_command(run, spec, sd, Slot(("2", "3")), Path("train.py"), resume=True)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and cmd[-1] == "--checkpoint.resume=latest"


# ----------------------------------------------------------------------------------------------
# The scheduler, with a fake training script

FAKE_TRAIN = '''
import json, math, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
run_dir = os.path.join(args["log.dir"], args["log.run_id"])
rank = int(os.environ.get("RANK", "0"))
start = time.time()
if rank == 0 and os.path.exists(run_dir) and args.get("checkpoint.resume") != "latest":
    sys.exit("config error: run directory exists")  # as train_gpt.py refuses it
lr = float(args["optim.lr"])
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.5")))
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(dict(run=args["log.run_id"], gpus=os.environ.get("CUDA_VISIBLE_DEVICES"), rank=rank,
                            world=os.environ.get("WORLD_SIZE"), resume=args.get("checkpoint.resume"),
                            start=start, end=time.time())) + "\\n")
if rank != 0:
    sys.exit(0)
os.makedirs(run_dir, exist_ok=True)
fail = os.environ.get("FAKE_FAIL")
if lr == 0.4 and (fail == "1" or (fail == "once" and not os.path.exists(os.path.join(run_dir, "failed_once")))):
    open(os.path.join(run_dir, "failed_once"), "w").close()
    print("step:1/10 train_loss:5.0", flush=True)
    print("RuntimeError: fake crash", file=sys.stderr)
    sys.exit(1)
if lr == 0.4 and fail == "config":
    print("config error: fake bad key", file=sys.stderr)
    sys.exit(2)
status = "diverged" if lr == 0.3 else "completed"
loss = 3.0 + (math.log2(lr) + 3) ** 2 / 10 + 1 / int(args["model.width"])
summary = dict(status=status, final_val_loss=loss, steps=10, train_time_ms=1000.0 * lr, step_avg_ms=100.0)
open(os.path.join(run_dir, "summary.json"), "w").write(json.dumps(summary))
sys.exit(3 if status == "diverged" else 0)
'''

FAKE_SPEC = """
    name = "fake"
    base = "configs/smoke.toml"
    [axes]
    "model.width" = [64, 128]
    "optim.lr" = [0.0625, 0.125, 0.3, 0.4]
    [extra."model.width"]
    64 = { "model.heads" = 2 }
    128 = { "model.heads" = 4 }
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    spec = write_spec(tmp_path, FAKE_SPEC)

    def run_sweep(*extra):
        code = sweep.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--train-script", str(script),
                           *extra])
        return code, [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return run_sweep, SweepDir(tmp_path / "sweeps" / "fake")


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_scheduler_runs_one_per_gpu_and_resumes(fake, monkeypatch, capsys):
    run_sweep, sd = fake
    monkeypatch.setenv("FAKE_FAIL", "1")
    code, calls = run_sweep("--gpus", "0,1,2,3", "--retries", "0")
    assert code == 1  # a failure is reported in the exit code, after every other run finished
    assert len(calls) == 8
    assert all(c["gpus"] in {"0", "1", "2", "3"} for c in calls)
    pairs = [(a, b) for i, a in enumerate(calls) for b in calls[i + 1:] if overlapping(a, b)]
    assert pairs, "runs on different GPUs should overlap in time"
    assert all(a["gpus"] != b["gpus"] for a, b in pairs), "two concurrent runs shared a GPU"
    assert max(sum(overlapping(a, b) for b in calls) for a in calls) <= 4

    rows = list(csv.DictReader(sd.results.open()))
    assert len(rows) == 8 and sd.figure.is_file()
    by_lr = {(r["model.width"], r["optim.lr"]): r for r in rows}
    assert by_lr[("64", "0.3")]["status"] == "diverged" and by_lr[("64", "0.3")]["diverged"] == "true"
    assert by_lr[("64", "0.3")]["final_val_loss"] == "nan"
    failed = by_lr[("128", "0.4")]
    assert failed["status"] == "failed" and failed["final_val_loss"] == "" and "fake crash" in failed["error"]
    record = sd.failure_file(failed["run_id"]).read_text()
    assert "exit code: 1" in record and "RuntimeError: fake crash" in record and "step:1/10" in record
    assert by_lr[("64", "0.125")]["status"] == "completed" and float(by_lr[("64", "0.125")]["final_val_loss"]) > 3
    out = capsys.readouterr().out
    assert "8/8" not in out and "6/8 done, 2 failed" in out and "left" in out

    # second invocation: finished runs are skipped, failed ones are left alone
    code, calls_again = run_sweep("--gpus", "0,1,2,3", "--retries", "0")
    assert code == 1 and len(calls_again) == len(calls)
    assert "0 to run" in capsys.readouterr().out

    # --retry-failed: the failed runs run again, resuming their existing directories
    monkeypatch.delenv("FAKE_FAIL")
    code, calls_retry = run_sweep("--gpus", "0,1", "--retry-failed")
    assert code == 0
    retried = calls_retry[len(calls):]
    assert sorted(c["run"] for c in retried) == sorted(r["run_id"] for r in rows if r["status"] == "failed")
    assert all(c["resume"] == "latest" for c in retried)
    assert not sd.failure_file(failed["run_id"]).exists()
    assert sd.failures.joinpath(f"{failed['run_id']}.attempt1.txt").is_file()  # the old record is kept
    rows = list(csv.DictReader(sd.results.open()))
    assert [r["status"] for r in rows].count("completed") == 6


@pytest.mark.parametrize("fail, calls_of_failing, status, attempts", [
    ("once", 2, "completed", "1"),  # fails, is started again at once, resumes and completes
    ("1", 2, "failed", "2"),  # fails twice: retries = 1 is spent, the table reports it
    ("config", 1, "failed", "1"),  # a config error is never retried (it would fail the same way)
])
def test_failed_runs_are_retried_up_to_the_configured_count(fake, monkeypatch, capsys, fail, calls_of_failing,
                                                             status, attempts):
    run_sweep, sd = fake
    monkeypatch.setenv("FAKE_FAIL", fail)
    monkeypatch.setenv("FAKE_SLEEP", "0")
    code, calls = run_sweep("--gpus", "0,1")
    assert code == (0 if status == "completed" else 1)
    failing = [c for c in calls if "lr-0.4" in c["run"]]
    assert len(failing) == 2 * calls_of_failing  # two widths
    assert all(c["resume"] == "latest" for c in failing[2:])  # a retry continues the run's directory
    rows = [r for r in csv.DictReader(sd.results.open()) if r["optim.lr"] == "0.4"]
    assert [r["status"] for r in rows] == [status] * 2 and [r["attempts_failed"] for r in rows] == [attempts] * 2
    assert ("retry" in capsys.readouterr().out) == (fail != "config")


def test_dry_run_lists_the_plan_and_runs_nothing(fake, capsys):
    run_sweep, sd = fake
    code, calls = run_sweep("--gpus", "0,1", "--dry-run")
    assert code == 0 and calls == [] and not sd.root.exists()
    out = capsys.readouterr().out
    assert "8 to run on 2 slot(s): GPU 0, GPU 1" in out and "width-128_lr-0.4" in out


def test_changed_recipe_is_refused(fake, tmp_path, capsys, monkeypatch):
    run_sweep, _ = fake
    monkeypatch.setenv("FAKE_SLEEP", "0")
    assert run_sweep("--gpus", "none")[0] in (0, 1)
    spec = tmp_path / "spec.toml"
    spec.write_text(spec.read_text().replace('"model.heads" = 4', '"model.heads" = 8'))
    code, _ = run_sweep("--gpus", "none")
    assert code == 2 and "different extra for model.width = 128" in capsys.readouterr().err
    # a new width with its own extra is an extension, not a change
    spec.write_text(spec.read_text().replace('"model.heads" = 8', '"model.heads" = 4')
                    .replace("[64, 128]", "[64, 128, 256]") + '256 = { "model.heads" = 8 }\n')
    code, calls = run_sweep("--gpus", "none")
    assert code == 0 and len(calls) == 12
    spec.write_text(spec.read_text().replace("[axes]", '[overrides]\n"schedule.steps" = 3\n[axes]'))
    code, _ = run_sweep("--gpus", "none")
    assert code == 2 and "different overrides" in capsys.readouterr().err


def test_torchrun_groups(fake, tmp_path):
    """Two concurrent torchrun groups of 2 (fake GPU ids, CPU processes): each its own GPUs."""
    run_sweep, sd = fake
    spec = tmp_path / "spec.toml"
    spec.write_text(spec.read_text().replace("[0.0625, 0.125, 0.3, 0.4]", "[0.125]"))
    code, calls = run_sweep("--gpus", "0,1,2,3", "--gpus-per-run", "2")
    assert code == 0, [p.read_text() for p in sd.logs.iterdir()]
    assert len(calls) == 4 and {c["world"] for c in calls} == {"2"}
    groups = {c["run"]: c["gpus"] for c in calls}
    assert sorted(groups.values()) == ["0,1", "2,3"]


# ----------------------------------------------------------------------------------------------
# The figure


def test_transfer_curves_and_figure(tmp_path):
    rows = []
    for opt in ("muon", "adamw"):
        for width in (128, 64):
            for lr in (0.01, 0.02, 0.04, 0.08):
                for seed in (0, 1):
                    diverged = lr == 0.08 and width == 128
                    loss = 3 + (math.log2(lr / 0.02)) ** 2 / 10 + seed / 100
                    rows.append({"optim.name": opt, "model.width": width, "optim.lr": lr, "seed": seed,
                                 "status": "diverged" if diverged else "completed", "diverged": diverged,
                                 "final_val_loss": math.nan if diverged else loss})
    rows.append({"optim.name": "muon", "model.width": 64, "optim.lr": 0.16, "seed": 0, "status": "failed",
                 "diverged": False, "final_val_loss": None})
    curves = results.transfer_curves(rows, PlotSpec())
    assert list(curves) == ["muon", "adamw"] and list(curves["muon"]) == [64, 128]
    assert curves["muon"][64][0.02] == pytest.approx(3.005)  # mean over seeds
    assert 0.16 not in curves["muon"][64]  # failed runs are not points
    assert curves["muon"][128][0.08] == math.inf
    assert results.best_x(curves["muon"][64]) == 0.02
    out = results.plot_lr_transfer(rows, PlotSpec(), tmp_path / "fig.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert results.plot_lr_transfer([dict(rows[-1])], PlotSpec(), tmp_path / "none.png") is None


# ----------------------------------------------------------------------------------------------
# A tiny real sweep

TINY = {
    "model.depth": 2, "model.value_embeds": 1, "model.window_pattern": "LS", "model.seq_len": 128,
    "model.window": 96, "data.batch_tokens": 1024, "data.micro_batch_size": 8, "eval.tokens": 4096,
    "eval.every": 0, "log.every": 2, "schedule.steps": 4, "checkpoint.every": 0,
    "optim.muon.momentum_warmup_steps": 2,
}


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path, capsys):
    """2 widths x 3 learning rates of the smoke model, plus an invalid optimizer name: the invalid
    runs are recorded as failures, the others finish; a second invocation runs nothing new."""
    spec = tmp_path / "tiny.toml"
    spec.write_text("\n".join([
        'name = "tiny"',
        f'base = "{REPO / "configs/smoke.toml"}"',
        "[overrides]",
        *(f'"{k}" = {toml_value(v)}' for k, v in TINY.items()),
        "[axes]",
        '"optim.name" = ["muon", "no_such_optimizer"]',
        '"model.width" = [64, 128]',
        '"optim.lr" = { by = "optim.name", muon = [0.01, 0.05, 0.2], no_such_optimizer = [0.05] }',
        '[extra."model.width"]',
        '64 = { "model.heads" = 2 }',
        '128 = { "model.heads" = 4 }',
    ]))
    args = ["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--gpus", "0,1"]  # fake GPUs: 2 at a time
    assert sweep.main(args) == 1
    sd = SweepDir(tmp_path / "sweeps" / "tiny")
    rows = list(csv.DictReader(sd.results.open()))
    assert len(rows) == 8
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(done) == 6 and all(math.isfinite(float(r["final_val_loss"])) for r in done)
    assert {r["optim.name"] for r in failed} == {"no_such_optimizer"}
    assert all("optim.name" in r["error"] for r in failed)
    assert all("exit code: 2" in sd.failure_file(r["run_id"]).read_text() for r in failed)
    assert sd.figure.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((sd.run_dir("name-muon_width-128_lr-0.05") / "summary.json").read_text())
    assert summary["width"] == 128 and summary["lr"] == 0.05 and summary["steps"] == 4

    logs_before = {p.name: p.read_text() for p in sd.logs.iterdir()}
    capsys.readouterr()
    assert sweep.main(args) == 1  # the failures are still there
    assert "0 to run" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in sd.logs.iterdir()} == logs_before


def test_failure_record_names_the_workers_error(tmp_path):
    """Under torchrun the last lines are torchrun's own report; the error line is the worker's."""
    sd = SweepDir(tmp_path / "s")
    run = plan.PlannedRun("lr-0.1", {"optim.lr": 0.1}, ("--optim.lr=0.1",))
    sd.logs.mkdir(parents=True)
    sd.log_file(run.run_id).write_text("\n".join([
        "=== earlier attempt", "RuntimeError: old news", "=== this attempt",
        "config error: data.batch_tokens (1024) must be a positive multiple of world size (2)",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "  error_file: <N/A>",
        "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
    ]) + "\n")
    offset = sd.log_file(run.run_id).read_text().index("=== this attempt")
    job = runner.Launched(run, Slot(("0", "1")), proc=None, command=["torchrun", "x"], started=0.0, log_offset=offset)
    error = runner.write_failure(sd, job, code=1, elapsed=3.0)
    assert error.startswith("config error: data.batch_tokens")
    record = sd.failure_file(run.run_id).read_text()
    assert record.startswith("error: config error") and "exit code: 1 (failed" in record and "old news" not in record
    assert sd.error(run.run_id) == error


# Grids without edges (scripts/studies/edges.py), label axes (issue 25)

EDGE_SPEC = """
    name = "edges"
    base = "configs/smoke.toml"
    [axes]
    "label.variant" = ["plain", "wide"]
    "model.width" = [64, 128]
    "optim.lr" = [0.5, 1.0]
    "seed" = [0, 1]
    [extra."label.variant"]
    plain = { "model.depth" = 2 }
    wide = { "model.depth" = 3 }
    [extra."model.width"]
    64 = { "model.heads" = 2 }
    128 = { "model.heads" = 4 }
    [plot]
    panels = "label.variant"
"""


def test_label_axes_are_run_ids_and_extras_not_config_keys(tmp_path):
    spec = plan.load_spec(write_spec(tmp_path, EDGE_SPEC))
    run = plan.plan_runs(spec)[0]
    assert run.run_id.startswith("variant-plain_width-64_lr-0.5_seed-0")
    assert "--model.depth=2" in run.overrides and not any(o.startswith("--label.") for o in run.overrides)
    with pytest.raises(SpecError, match="label axis needs"):
        no_extra = EDGE_SPEC.replace('[extra."label.variant"]\n    plain = { "model.depth" = 2 }\n'
                                     '    wide = { "model.depth" = 3 }\n', "")
        plan.load_spec(write_spec(tmp_path, no_extra, name="bad.toml"))


def test_extend_edges_walks_the_grid_until_every_best_is_inside(fake, tmp_path, monkeypatch, capsys):
    """The fake trainer's loss is a bowl around lr 0.125; the grid [0.5, 1] has its best at its lower end,
    so each round adds the next lr down (every seed), until 0.125 is inside: 0.25, 0.125, 0.0625."""
    monkeypatch.setenv("FAKE_SLEEP", "0")
    script = tmp_path / "fake_train.py"
    spec = write_spec(tmp_path, EDGE_SPEC, name="edges.toml")
    out = tmp_path / "sweeps"
    assert sweep.main(["--spec", str(spec), "--out", str(out), "--train-script", str(script),
                       "--gpus", "none", "--extend-edges", "1"]) == 0
    sd = SweepDir(out / "edges")
    lrs = sorted({float(r["optim.lr"]) for r in csv.DictReader(open(sd.results))})
    assert lrs == [0.25, 0.5, 1.0]  # one round only
    assert sweep.main(["--spec", str(spec), "--out", str(out), "--train-script", str(script),
                       "--gpus", "none", "--extend-edges", "5"]) == 0
    assert "every curve's best optim.lr is inside its grid" in capsys.readouterr().out
    rows = list(csv.DictReader(open(sd.results)))
    assert sorted({float(r["optim.lr"]) for r in rows}) == [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert len(rows) == 2 * 2 * 5 * 2 and all(r["status"] == "completed" for r in rows)  # every seed, variant, width
    shift = json.loads((sd.root / "transfer.json").read_text())["shift"]
    assert shift["plain"]["edge"] == [] and shift["plain"]["per_seed"] == {"0": 0.0, "1": 0.0}
    # a later invocation without --extend-edges still plans (and reports) the added runs
    assert sweep.main(["--spec", str(spec), "--out", str(out), "--train-script", str(script), "--gpus", "none"]) == 0
    assert len(list(csv.DictReader(open(sd.results)))) == 40
