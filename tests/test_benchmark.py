"""scripts/studies/benchmark.py: steps to target against hand-computed cases, the target and the scores, spec
errors, the shipped specs, the whole protocol with a fake training script (search, refinement, ladder,
reuse of finished runs when an optimizer is added, the record), and a 2-optimizer 2-budget benchmark
of the real trainer on a tiny made-up text."""

import csv
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from data import shakespeare
from scripts.studies import benchmark, benchmark_spec
from scripts.studies import scores as scoring
from scripts.studies.scores import Reach, steps_to_target
from scripts.studies.spec import SpecError, plan_runs

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs/benchmarks").glob("*.toml"))


# ----------------------------------------------------------------------------------------------
# Steps to target


@pytest.mark.parametrize("losses, target, expected", [
    # between 100 (1.8) and 200 (1.6), half way in loss: log-steps half way, 100 * sqrt(2)
    ({50: 2.0, 100: 1.8, 200: 1.6}, 1.7, Reach(100 * 2 ** 0.5, "interpolated")),
    ({100: 3.0, 400: 2.0}, 2.5, Reach(200.0, "interpolated")),  # sqrt(100 * 400)
    ({100: 3.0, 400: 2.0}, 2.75, Reach(100 * 4 ** 0.25, "interpolated")),  # a quarter of the way: 100 * 4^(1/4)
    ({50: 2.0, 100: 1.8, 200: 1.6}, 1.8, Reach(100.0, "interpolated")),  # exactly the loss of a rung
    ({50: 2.0, 100: 1.8, 200: 1.6}, 2.1, Reach(50.0, "smallest")),  # reached at the smallest budget
    ({50: 2.0, 100: 1.8, 200: 1.6}, 1.5, Reach(None, "never")),  # never reached
    # not monotone: the first budget at or below the target counts, bracketed by the one before it
    ({50: 2.0, 100: 1.65, 200: 1.7}, 1.68, Reach(50 * 2 ** (0.32 / 0.35), "interpolated")),
    ({50: math.inf, 100: 1.6}, 1.7, Reach(100.0, "interpolated")),  # the shorter run diverged
    ({50: 2.0, 100: 1.9, 200: None}, 1.7, Reach(None, "never")),  # the longest run missing: not reached
])
def test_steps_to_target(losses, target, expected):
    got = steps_to_target(losses, target)
    assert got.how == expected.how
    assert got.steps == (None if expected.steps is None else pytest.approx(expected.steps, rel=1e-12))


def test_reach_text():
    assert Reach(141.42, "interpolated").text(200) == "141"
    assert Reach(50.0, "smallest").text(200) == "<= 50"
    assert Reach(None, "never").text(200) == "> 200"


def small_spec(**changes) -> benchmark_spec.BenchmarkSpec:
    fields = dict(name="t", base="configs/track3_tiny.toml", optimizers=("muon", "adamw"), budgets=(50, 100, 200),
                  seeds=(0, 1), target="adamw@largest")
    return benchmark_spec.BenchmarkSpec(**{**fields, **changes})


LADDER = {
    "muon": {50: {0: 2.0, 1: 2.1}, 100: {0: 1.7, 1: 1.75}, 200: {0: 1.5, 1: 1.55}},
    "adamw": {50: {0: 2.2, 1: 2.3}, 100: {0: 1.9, 1: 2.0}, 200: {0: 1.6, 1: 1.7}},
}


@pytest.mark.parametrize("target, value", [
    (1.65, 1.65), ("adamw@largest", 1.65), ("adamw@largest:max", 1.7), ("adamw@100", 1.95), ("muon@200:max", 1.55),
])
def test_resolve_target(target, value):
    got, text = scoring.resolve_target(small_spec(target=target), LADDER)
    assert got == pytest.approx(value)
    assert f"{value:.4f}" in text or str(value) in text


def test_resolve_target_needs_every_seed():
    ladder = {**LADDER, "adamw": {**LADDER["adamw"], 200: {0: 1.6, 1: math.inf}}}
    with pytest.raises(SpecError, match="no finite final loss"):
        scoring.resolve_target(small_spec(), ladder)
    with pytest.raises(SpecError, match="no finite final loss"):
        scoring.resolve_target(small_spec(), {"muon": LADDER["muon"]})


def test_score_means_ranges_and_ratio():
    spec = small_spec(target="adamw@largest:max")
    scores = scoring.score(spec, LADDER, 1.7)
    muon, adamw = scores["muon"], scores["adamw"]
    assert adamw["reaches"][1] == Reach(200.0, "interpolated")  # its worst seed reaches 1.7 at exactly 200
    assert adamw["reaches"][0].steps == pytest.approx(100 * 2 ** ((1.9 - 1.7) / (1.9 - 1.6)))
    assert muon["reaches"][0].steps == pytest.approx(100.0)  # 1.7 is its loss at 100
    assert muon["reaches"][1].steps == pytest.approx(100 * 2 ** ((1.75 - 1.7) / (1.75 - 1.55)))
    assert muon["mean"] == pytest.approx((100 + 100 * 2 ** 0.25) / 2)
    assert (muon["min"], muon["max"]) == (pytest.approx(100.0), pytest.approx(100 * 2 ** 0.25))
    assert muon["ratio"] == pytest.approx(muon["mean"] / adamw["mean"])
    lower = scoring.score(spec, LADDER, 1.52)  # adamw never gets there: no mean, no ratio for anyone
    assert lower["adamw"]["mean"] is None and lower["adamw"]["reached"] == 0 and lower["muon"]["ratio"] is None
    assert lower["muon"]["reached"] == 1 and lower["muon"]["mean"] is None


def test_t_interval_and_welch_test_against_the_formulas():
    """Written out from the textbook: mean +- t_{n-1, 0.975} s / sqrt(n); Welch's statistic with the
    Welch-Satterthwaite degrees of freedom, two-sided."""
    from scipy import stats

    lo, hi = scoring.t_interval([10.0, 12.0, 14.0], 0.95)
    half = 4.302652729911275 * 2.0 / math.sqrt(3)  # t_{2, 0.975}; sample std 2
    assert (lo, hi) == (pytest.approx(12 - half), pytest.approx(12 + half))
    assert scoring.t_interval([10.0], 0.95) is None
    xs, ys = [50.0, 55.0, 61.0], [100.0, 120.0, 95.0]
    vx, vy = np.var(xs, ddof=1) / 3, np.var(ys, ddof=1) / 3
    t = (np.mean(xs) - np.mean(ys)) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / 2 + vy ** 2 / 2)
    assert scoring.welch_p(xs, ys) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert scoring.welch_p([5.0, 5.0], [5.0, 5.0]) is None and scoring.welch_p([1.0], [2.0, 3.0]) is None


def test_the_headline_names_only_significant_differences():
    """Muon's seeds are far below AdamW's (p < 0.05): ratio in the headline; Scion's overlap AdamW's: 'not
    significantly different'; one Signum seed never reaches: no test."""
    spec = small_spec(optimizers=("muon", "scion", "adamw", "signum"), budgets=(50, 100, 200), seeds=(0, 1, 2))
    ladder = {  # the target 1.7: muon near 60 steps, scion ~ adamw near 150 with a wide spread
        "muon": {50: {0: 1.75, 1: 1.76, 2: 1.74}, 100: {0: 1.6, 1: 1.6, 2: 1.6}, 200: {0: 1.5, 1: 1.5, 2: 1.5}},
        "scion": {50: {0: 2.0, 1: 2.0, 2: 2.0}, 100: {0: 1.72, 1: 1.9, 2: 1.68}, 200: {0: 1.6, 1: 1.6, 2: 1.6}},
        "adamw": {50: {0: 2.0, 1: 2.0, 2: 2.0}, 100: {0: 1.8, 1: 1.75, 2: 1.85}, 200: {0: 1.6, 1: 1.65, 2: 1.6}},
        "signum": {50: {0: 2.0, 1: 2.0, 2: 2.0}, 100: {0: 1.9, 1: 1.9, 2: 1.9}, 200: {0: 1.6, 1: 1.8, 2: 1.6}},
    }
    scores = scoring.score(spec, ladder, 1.7)
    assert scores["muon"]["significant"] and scores["muon"]["p"] < 0.05
    assert not scores["scion"]["significant"] and scores["scion"]["p"] > 0.05
    assert scores["signum"]["p"] is None and scores["adamw"]["p"] is None  # censored; the reference itself
    line = scoring.headline(spec, scores, 1.7)
    assert f"muon {scores['muon']['mean']:.0f} ({scores['muon']['ratio']:.2f}x adamw, p " in line
    assert "scion" in line and "(not significantly different from adamw, p " in line and "signum > 200" in line
    lo, hi = scores["muon"]["ci"]
    assert lo < scores["muon"]["mean"] < hi and scores["signum"]["ci"] is None
    rows = "\n".join(scoring.steps_rows(spec, {o: {"best": 0.01, "edge": False, "losses": {0.01: 1.0, 0.02: 1.1}}
                                              for o in ladder}, scores))
    assert "95% interval" in rows and "p vs adamw" in rows and "| (reference) |" in rows and " * |" in rows


@pytest.mark.parametrize("per_lr, flagged", [
    ({1: [2.0], 2: [1.8], 4: [1.7], 8: [1.9]}, None),  # falls to the best, rises past it
    ({1: [2.0], 2: [1.6], 4: [1.7], 8: [1.5], 16: [1.9]}, "rises toward"),  # one seed: any reversal
    ({1: [2.0], 2: [1.7], 4: [1.8], 8: [math.inf]}, None),  # a diverged lr past the best is the worst: fine
    ({1: [2.0], 2: [1.8], 4: [1.7], 8: [math.inf], 16: [1.9]}, "falls away from"),
    # two seeds whose spread (0.14) dwarfs the reversal (0.02): within noise
    ({1: [2.0, 2.2], 2: [1.8, 1.6], 4: [1.62, 1.82], 8: [1.6, 1.8], 16: [2.0, 2.2]}, None),
    # the same reversal with seeds that agree to 0.002: beyond noise
    ({1: [2.0, 2.0], 2: [1.70, 1.702], 4: [1.72, 1.722], 8: [1.6, 1.602], 16: [2.0, 2.0]}, "rises toward"),
])
def test_a_non_monotone_search_is_flagged_beyond_its_noise(per_lr, flagged):
    got = scoring.non_monotone(per_lr)
    assert (got is None) if flagged is None else (flagged in got)


@pytest.mark.parametrize("x_star", [-0.5, -0.3, -0.1, 0.0, 0.2, 0.4, 0.49])
@pytest.mark.parametrize("h", [1.0, 2.0])
def test_refine_gain_bounds_what_a_midpoint_gains_on_a_parabola(x_star, h):
    """On L(x) = c (x - x*)^2 in x = log2(lr), sampled at the best grid point 0 and its neighbours -h, +h
    (|x*| <= h/2), the bound c (h/2 - 1/4) is at least what the better midpoint +-1/2 gains, and reached as
    x* -> h/2 (written here from the parabola, not from the code)."""
    c = 0.05
    loss = lambda x: c * (x - x_star) ** 2  # noqa: E731
    per_lr = {2.0 ** x: [loss(x)] for x in (-2 * h, -h, 0.0, h, 2 * h)}
    gain = loss(0.0) - min(loss(-0.5), loss(0.5))
    bound = scoring.refine_gain(per_lr)
    assert bound == pytest.approx(c * (h / 2 - 0.25)) and gain <= bound + 1e-12
    if x_star == 0.49 and h == 1.0:
        assert gain == pytest.approx(bound, abs=0.02 * c)  # c (0.49 - 1/4) vs c (1/2 - 1/4)


@pytest.mark.parametrize("per_lr, refine, why", [
    # a bowl of curvature 0.05 per (log2 lr)^2: a midpoint may gain 0.0125; seeds that agree to 0.002: refine
    ({1: [1.2, 1.202], 2: [1.05, 1.052], 4: [1.0, 1.002], 8: [1.05, 1.052], 16: [1.2, 1.202]}, True, "may gain up to 0.0125"),
    # the same bowl, seeds 0.2 apart: the midpoints cannot be told from the best
    ({1: [1.2, 1.4], 2: [1.05, 1.25], 4: [1.0, 1.2], 8: [1.05, 1.25], 16: [1.2, 1.4]}, False, "within the noise"),
    ({1: [1.2], 2: [1.05], 4: [1.0], 8: [1.05]}, True, "unknown (one seed)"),
    ({1: [1.2, 1.4], 2: [1.05, 1.25], 4: [1.0, 1.2]}, True, "end of the grid"),
    ({1: [1.2, 1.4], 2: [1.05, 1.25], 4: [1.0, 1.2], 8: [math.inf, math.inf]}, True, "diverged"),
])
def test_refine_only_where_a_midpoint_can_beat_the_noise(per_lr, refine, why):
    got, text = scoring.refine_worth(per_lr)
    assert got is refine and why in text


# ----------------------------------------------------------------------------------------------
# Specs


def write_spec(tmp_path: Path, body: str, name: str = "bench.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
    base = "configs/track3_tiny.toml"
    optimizers = ["muon", "adamw"]
    budgets = [100, 50]
    seeds = [0]
    target = "adamw@largest"
"""


def test_spec_defaults_and_grid(tmp_path):
    spec = benchmark_spec.load_benchmark(write_spec(tmp_path, GOOD + '[default_lr]\nadamw = 0.004\n'))
    assert spec.name == "bench" and spec.budgets == (50, 100) and spec.largest == 100
    assert benchmark_spec.default_lr(spec, "muon") == 0.025  # track3_tiny.toml trains muon at 0.025
    assert benchmark_spec.default_lr(spec, "adamw") == 0.004  # the spec's
    assert benchmark_spec.default_lr(spec, "scion") == 2.0 ** -12  # the registry's
    assert benchmark_spec.coarse_lrs(spec, "adamw") == (0.001, 0.002, 0.004, 0.008, 0.016)
    lo, hi = benchmark_spec.refine_lrs(0.004)
    assert lo == pytest.approx(0.004 / 2 ** 0.5) and hi == pytest.approx(0.004 * 2 ** 0.5)


@pytest.mark.parametrize("extra, message", [
    ("budget = [1]\n", "unknown key"),
    ("[search]\ngird = [0]\n", "search: unknown key"),
    ('reference = "signum"\n', "reference = 'signum' is not one of"),
    ("slots = 0\n", "slots"),
    ("[extra.nope]\nx = 1\n", "extra: unknown optimizer"),
    ("[search]\ngrid = []\n", "search.grid"),
])
def test_spec_errors(tmp_path, extra, message):
    with pytest.raises(SpecError, match=message):
        benchmark_spec.load_benchmark(write_spec(tmp_path, GOOD + extra))


@pytest.mark.parametrize("replace, message", [
    (('"muon", "adamw"', '"muon", "nope"'), "unknown optimizer"),
    (('"adamw@largest"', '"signum@largest"'), "signum is not one of the optimizers"),
    (('"adamw@largest"', '"adamw@70"'), "70 is not one of the budgets"),
    (('"adamw@largest"', '"best"'), "expected a loss"),
    (("[100, 50]", "[100, 100]"), "listed twice"),
    (("seeds = [0]", "seeds = []"), "seeds"),
])
def test_spec_errors_in_values(tmp_path, replace, message):
    with pytest.raises(SpecError, match=message):
        benchmark_spec.load_benchmark(write_spec(tmp_path, GOOD.replace(*replace)))


def test_shipped_specs_plan_and_validate():
    assert {p.name for p in SHIPPED} >= {"cpu_shakespeare.toml", "track3_fineweb.toml"}
    for path in SHIPPED:
        spec = benchmark_spec.load_benchmark(path)
        assert spec.base_path.is_file()
        benchmark_spec.check_configs(spec, world_size=spec.gpus_per_run)  # every optimizer's run config is valid
        runs = plan_runs(benchmark_spec.phase_spec(spec, {o: benchmark_spec.coarse_lrs(spec, o)
                                                               for o in spec.optimizers}, spec.budgets, spec.seeds))
        assert len({r.run_id for r in runs}) == len(runs) > 0
    cpu = benchmark_spec.load_benchmark(REPO / "configs/benchmarks/cpu_shakespeare.toml")
    assert cpu.optimizers == ("muon", "scion", "adamw", "signum", "shampoo", "normuon", "prodigy") and cpu.slots <= 2
    assert cpu.overrides["checkpoint.every"] == 0 and cpu.overrides["checkpoint.final"] is False


# ----------------------------------------------------------------------------------------------
# The protocol with a fake training script: loss = a bowl in log2(lr) around each optimizer's best,
# falling with steps; lr > 8x the best diverges.

FAKE_TRAIN = '''
import json, math, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
opt, lr = args["optim.name"].strip('"'), float(args["optim.lr"]) * float(args.get("optim.lr_scale", 1))
steps, seed = int(args["schedule.steps"]), int(args["seed"])
run_dir = os.path.join(args["log.dir"], args["log.run_id"])
os.makedirs(run_dir, exist_ok=True)
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(args["log.run_id"] + "\\n")
best = {"muon": 0.05 * 2 ** 0.5, "adamw": 0.0018, "signum": 0.004}[opt]
speed = {"muon": 2.0, "adamw": 1.0, "signum": 0.8}[opt]
def loss(s):
    return 1.0 + 2.0 / (speed * s) ** 0.5 + 0.05 * math.log2(lr / best) ** 2 + spread * seed
spread = float(os.environ.get("FAKE_SEED_SPREAD", "0.002"))
status = "diverged" if lr > 8 * best else "completed"
final = float("nan") if status == "diverged" else loss(steps)
with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for s in (steps // 4, steps // 2, steps):
        f.write(json.dumps({"step": s, "val_loss": loss(s) if status == "completed" else None}) + "\\n")
json.dump(dict(status=status, final_val_loss=final, steps=steps, train_time_ms=10.0, step_avg_ms=1.0, device="cpu"),
          open(os.path.join(run_dir, "summary.json"), "w"))
sys.exit(3 if status == "diverged" else 0)
'''

FAKE_SPEC = """
    name = "fake"
    base = "configs/track3_tiny.toml"
    optimizers = {optimizers}
    budgets = [50, 100, 200]
    seeds = [0, 1]
    target = "adamw@largest:max"
    track = "cpu-test"
    [search]
    grid = [-1, 0, 1]
    [default_lr]
    muon = 0.05
    [extra.adamw]
    "optim.adamw.hidden.weight_decay" = 0.1
"""


def fake_loss(opt: str, lr: float, steps: int, seed: int) -> float:
    best = {"muon": 0.05 * 2 ** 0.5, "adamw": 0.0018, "signum": 0.004}[opt]
    speed = {"muon": 2.0, "adamw": 1.0, "signum": 0.8}[opt]
    return 1.0 + 2.0 / (speed * steps) ** 0.5 + 0.05 * math.log2(lr / best) ** 2 + 0.002 * seed


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS", str(calls))

    def run(optimizers, *extra):
        spec = write_spec(tmp_path, FAKE_SPEC.format(optimizers=json.dumps(optimizers)))
        before = len(calls.read_text().splitlines()) if calls.exists() else 0
        code = benchmark.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--train-script", str(script),
                               "--gpus", "none", "--slots", "2", "--records-root", str(tmp_path / "records"), *extra])
        return code, calls.read_text().splitlines()[before:] if calls.exists() else []

    return run, tmp_path / "sweeps" / "fake"


def test_protocol_with_a_fake_trainer(fake, capsys):
    run, root = fake
    code, calls = run(["muon", "adamw"])
    assert code == 0
    # search 3 + refine 2 per optimizer, ladder 3 budgets x 2 seeds less the shared run: 5 + 5 = 10 each
    assert len(calls) == len(set(calls)) == 20
    assert benchmark_spec.protocol_size(benchmark_spec.load_benchmark(root.parent.parent / "bench.toml"))["runs"] == 20
    code, _ = run(["muon", "adamw"], "--dry-run")  # all finished: the pace of their training and nothing left
    assert code == 0 and "20 runs finished; at their" in capsys.readouterr().out
    data = json.loads((root / "benchmark.json").read_text())
    assert data["search"]["muon"]["best"] == pytest.approx(0.05 * 2 ** 0.5)  # found by the refinement
    assert data["search"]["adamw"]["best"] == pytest.approx(0.0018) and not data["search"]["adamw"]["edge"]
    target = max(fake_loss("adamw", 0.0018, 200, s) for s in (0, 1))
    assert data["target"] == pytest.approx(target)
    for opt in ("muon", "adamw"):  # each seed's steps from the fake losses, by hand
        best = data["search"][opt]["best"]
        for seed in (0, 1):
            losses = {b: fake_loss(opt, best, b, seed) for b in (50, 100, 200)}
            first = next(b for b in (50, 100, 200) if losses[b] <= target)
            a = {100: 50, 200: 100}[first]
            expected = a * (first / a) ** ((losses[a] - target) / (losses[a] - losses[first]))
            assert data["scores"][opt]["per_seed"][str(seed)]["steps"] == pytest.approx(expected)
    assert data["scores"]["adamw"]["max"] == pytest.approx(200.0)
    muon, adamw = data["scores"]["muon"], data["scores"]["adamw"]
    assert muon["ratio"] == pytest.approx(muon["mean"] / adamw["mean"])
    table = (root / "table.md").read_text()
    assert "| muon | 0.07071 |" in table and "x adamw" in table
    assert (root / "loss_curves.png").read_bytes()[:4] == b"\x89PNG" and (root / "lr_search.png").is_file()
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert len(rows) == 20 and {r["phase"] for r in rows} >= {"search", "refine", "ladder", "refine+ladder"}

    code, calls = run(["muon", "adamw"])  # again: nothing new
    assert code == 0 and calls == []
    code, calls = run(["muon", "adamw", "signum"], "--record")  # a new optimizer: only its runs
    assert code == 0 and len(calls) == 10 and all("name-signum" in c for c in calls)
    data = json.loads((root / "benchmark.json").read_text())
    assert data["search"]["signum"]["edge"]  # its best (0.004) is past the grid's end: said loudly
    assert "WARNING: signum's best lr" in (root / "table.md").read_text()
    assert len(data["invocations"]) == 3
    record = next((root.parents[1] / "records/cpu-test").iterdir())
    info = json.loads((record / "record.json").read_text())
    assert info["kind"] == "benchmark" and info["runs"] == 30 and info["headline"] == data["headline"]
    assert (record / "spec.toml").is_file() and (record / "table.md").is_file()
    assert sorted(p.name for p in (record / "runs").iterdir()) == sorted(p.name for p in (root / "runs").iterdir())
    readme = (root.parents[1] / "records/README.md").read_text()
    assert "## Benchmarks and sweeps" in readme and f"[fake]({record.parent.name}/{record.name}/)" in readme
    assert run(["muon", "adamw", "signum"], "--record")[0] == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    (record / "record.json").write_text(json.dumps({**info, "headline": "stale", "runs": 1}))
    code, calls = run(["muon", "adamw", "signum"], "--out", str(record.parent), "--name", record.name)
    assert code == 0 and calls == [] and "record refreshed" in capsys.readouterr().out  # re-scored in place
    assert json.loads((record / "record.json").read_text())["headline"] == data["headline"]
    assert json.loads((record / "benchmark.json").read_text())["name"] == data["name"] == "fake"  # not the folder's
    assert "# Benchmark fake:" in (record / "table.md").read_text()


def test_changed_recipe_is_refused(fake, capsys):
    run, root = fake
    assert run(["adamw"])[0] == 0
    spec = (root / "spec.toml").read_text()
    (root.parent.parent / "bench.toml").write_text(spec.replace("weight_decay\" = 0.1", "weight_decay\" = 0.2"))
    from scripts.studies.benchmark import main
    code = main(["--spec", str(root.parent.parent / "bench.toml"), "--out", str(root.parent),
                 "--train-script", str(root.parent.parent / "fake_train.py"), "--gpus", "none"])
    assert code == 2 and "different" in capsys.readouterr().err


def test_given_lrs_and_search_seeds(fake, tmp_path):
    """grid = [0] without refinement: the lr is given, not searched (no EDGE, no warning); search.seeds = [0, 1]
    scores each lr by the mean of both seeds' final losses, and the ladder reuses both search runs."""
    run, root = fake
    spec = tmp_path / "bench.toml"
    given = FAKE_SPEC.replace("grid = [-1, 0, 1]", "grid = [0]\n    refine = false")
    spec.write_text(textwrap.dedent(given.format(optimizers=json.dumps(["adamw"]))))
    calls = tmp_path / "calls.txt"
    assert benchmark.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--train-script",
                           str(tmp_path / "fake_train.py"), "--gpus", "none"]) == 0
    table = (root / "table.md").read_text()
    assert "0.0018 (given)" in table and "EDGE" not in table.split("## Steps to target")[1].split("Per seed")[0]
    assert "WARNING" not in table and not json.loads((root / "benchmark.json").read_text())["search"]["adamw"]["edge"]

    seeds = given.replace("name = \"fake\"", "name = \"fake2\"").replace("[search]", "[search]\n    seeds = [0, 1]")
    spec.write_text(textwrap.dedent(seeds.format(optimizers=json.dumps(["adamw"]))))
    bench = benchmark_spec.load_benchmark(spec)
    assert bench.search_seeds == (0, 1) and benchmark_spec.protocol_size(bench)["runs"] == 2 + 6 - 2
    before = len(calls.read_text().splitlines())
    assert benchmark.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--train-script",
                           str(tmp_path / "fake_train.py"), "--gpus", "none"]) == 0
    assert len(calls.read_text().splitlines()) - before == 6
    data = json.loads((root.parent / "fake2" / "benchmark.json").read_text())
    mean = (fake_loss("adamw", 0.0018, 200, 0) + fake_loss("adamw", 0.0018, 200, 1)) / 2
    assert data["search"]["adamw"]["losses"][repr(0.0018)] == pytest.approx(mean)
    assert "mean final validation loss over the search seeds" in (root.parent / "fake2" / "table.md").read_text()
    with pytest.raises(SpecError, match="not both"):
        spec.write_text(textwrap.dedent(seeds.replace("[search]", "[search]\n    seed = 0")
                                        .format(optimizers=json.dumps(["adamw"]))))
        benchmark_spec.load_benchmark(spec)


def test_dry_run_runs_nothing(fake, capsys):
    run, root = fake
    code, calls = run(["muon", "adamw"], "--dry-run")
    assert code == 0 and calls == [] and not (root / "runs").exists()
    out = capsys.readouterr().out
    assert "search: 6 runs, 0 finished, 6 to run" in out and "ladder: planned" in out
    size = benchmark_spec.protocol_size(benchmark_spec.load_benchmark(root.parent.parent / "bench.toml"))
    assert f"the whole protocol: {size['runs']} runs" in out and "time: measured from the first finished run" in out


# ----------------------------------------------------------------------------------------------
# The real trainer on a tiny made-up text: 2 optimizers x 2 budgets


def tiny_text(out: Path) -> int:
    """Made-up plays as character shards (data/shakespeare.py); returns the vocabulary size."""
    rng = np.random.default_rng(0)
    words = ["king", "queen", "love", "death", "night", "crown", "sword", "heart", "fool", "ghost"]
    plays = [shakespeare.Document(f"play{i}", f"Play {i}", "\n".join(
        f"{'ABC'[j % 3]}. " + " ".join(rng.choice(words, 6)) for j in range(60))) for i in range(4)]
    summary = shakespeare.prepare(plays[:3], plays[3:], str(out))
    return summary["vocab_size"]


def test_tiny_benchmark_end_to_end(tmp_path, monkeypatch):
    vocab = tiny_text(tmp_path / "text")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = write_spec(tmp_path, f"""
        name = "tiny"
        base = "{REPO / 'configs/track3_tiny.toml'}"
        optimizers = ["muon", "adamw"]
        budgets = [2, 4]
        seeds = [0]
        target = "adamw@largest"
        slots = 2
        [search]
        grid = [0]
        refine = false
        [overrides]
        "data.synthetic" = false
        "data.train_files" = "{tmp_path / 'text/shakespeare_train_*.bin'}"
        "data.val_files" = "{tmp_path / 'text/shakespeare_val_*.bin'}"
        "model.vocab_size" = {vocab}
        "model.eot_token" = 0
        "model.width" = 32
        "model.head_dim" = 32
        "model.depth" = 1
        "model.seq_len" = 64
        "data.batch_tokens" = 128
        "eval.tokens" = 256
        "eval.every" = 1
        "eval.every_late" = 0
        "checkpoint.every" = 0
        "checkpoint.final" = false
    """)
    assert benchmark.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--gpus", "none"]) == 0
    root = tmp_path / "sweeps/tiny"
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)  # 2 searches + 2 short ladder runs
    data = json.loads((root / "benchmark.json").read_text())
    assert data["target"] == pytest.approx(data["ladder"]["adamw"]["4"]["0"])
    assert data["scores"]["adamw"]["per_seed"]["0"]["steps"] <= 4  # it reaches its own loss by 4 steps
    assert (root / "loss_curves.png").read_bytes()[:4] == b"\x89PNG" and (root / "lr_search.png").is_file()
    summary = json.loads((root / "runs/name-adamw_steps-2_lr-0.0018_seed-0/summary.json").read_text())
    assert summary["steps"] == 2 and summary["optimizer"] == "adamw" and summary["width"] == 32
    assert "## Steps to target" in (root / "table.md").read_text()


def test_retarget_to_another_text_with_given_lrs(tmp_path):
    """--data points every run at another folder of shards (its vocabulary and separator from documents.json);
    --lrs-from trains a previous search's best lrs as given; both are refused with the reason when they cannot
    work."""
    vocab = tiny_text(tmp_path / "text")
    bench = small_spec(overrides={"eval.tokens": 256, "data.synthetic": True})
    searched = tmp_path / "benchmark.json"
    searched.write_text(json.dumps({"search": {"muon": {"best": 0.03}, "adamw": {"best": 0.002}}}))
    got = benchmark_spec.retarget(bench, tmp_path / "text", searched)
    assert got.name == "t_text_given-lrs" and got.grid == (0,) and not got.refine
    assert got.default_lr == {"muon": 0.03, "adamw": 0.002}
    assert got.overrides["model.vocab_size"] == vocab and got.overrides["model.eot_token"] == 0
    assert got.overrides["data.synthetic"] is False and got.overrides["eval.tokens"] == 256
    assert got.overrides["data.train_files"] == str(tmp_path / "text" / "*_train_*.bin")
    with pytest.raises(SpecError, match="validation holds"):
        benchmark_spec.retarget(small_spec(overrides={"eval.tokens": 10 ** 7}), tmp_path / "text")
    with pytest.raises(SpecError, match="data.shakespeare --text FILE"):
        benchmark_spec.retarget(bench, tmp_path / "nothing")
    searched.write_text(json.dumps({"search": {"muon": {"best": 0.03}, "adamw": {"best": None}}}))
    with pytest.raises(SpecError, match="no best lr for adamw"):
        benchmark_spec.retarget(bench, lrs_from=searched)


def test_the_stdlib_documentation_as_a_text(tmp_path):
    """data/stdlib_docs.py: one document per module with docstrings (name first, docstrings in source order),
    tests and modules without docstrings left out, readable as data/shakespeare.py's --text."""
    from data import stdlib_docs

    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "alpha.py").write_text('"""Alpha module."""\ndef f():\n    """Does f."""\n')
    (lib / "pkg" / "__init__.py").write_text('class C:\n    """A class."""\n')
    (lib / "bare.py").write_text("x = 1\n")
    (lib / "test" / "test_alpha.py").write_text('"""A test."""\n')
    texts = stdlib_docs.documents(lib)
    assert texts[:2] == ["alpha\n\nAlpha module.\n\nDoes f.", "pkg\n\nA class."]
    assert not any("A test." in t for t in texts) and not any(t.startswith("bare") for t in texts)
    count = stdlib_docs.write_text(tmp_path / "docs.txt", lib)
    docs = shakespeare.read_text_files([tmp_path / "docs.txt"])
    assert len(docs) == count == len(texts) and docs[0].text == texts[0]


def test_refine_beyond_noise_skips_what_the_search_cannot_see(fake, tmp_path, monkeypatch):
    """search.refine = "beyond_noise" with 2 search seeds: seeds 0.002 apart, both optimizers are refined (the
    fake's bowl lets a midpoint gain 0.0125); 0.2 apart, neither is, and the table and benchmark.json say why."""
    run, root = fake
    spec = tmp_path / "bench.toml"
    body = FAKE_SPEC.replace("[search]", '[search]\n    seeds = [0, 1]\n    refine = "beyond_noise"')
    spec.write_text(textwrap.dedent(body.format(optimizers=json.dumps(["muon", "adamw"]))))
    args = ["--spec", str(spec), "--train-script", str(tmp_path / "fake_train.py"), "--gpus", "none"]
    assert benchmark.main([*args, "--out", str(tmp_path / "agree")]) == 0
    data = json.loads((tmp_path / "agree" / "fake" / "benchmark.json").read_text())
    assert all(s["refine_skipped"] is None and len(s["losses"]) == 5 for s in data["search"].values())
    monkeypatch.setenv("FAKE_SEED_SPREAD", "0.2")
    assert benchmark.main([*args, "--out", str(tmp_path / "noisy")]) == 0
    data = json.loads((tmp_path / "noisy" / "fake" / "benchmark.json").read_text())
    assert all("within the noise" in s["refine_skipped"] and len(s["losses"]) == 3 for s in data["search"].values())
    assert "not for muon: a midpoint gains at most" in (tmp_path / "noisy" / "fake" / "table.md").read_text()


@pytest.mark.parametrize("value", ['"sometimes"', "1"])
def test_refine_takes_true_false_or_beyond_noise(tmp_path, value):
    with pytest.raises(SpecError, match="search.refine"):
        benchmark_spec.load_benchmark(write_spec(tmp_path, GOOD + f"[search]\nrefine = {value}\n"))


def test_a_search_of_every_roles_lr_together(fake, tmp_path):
    """search.roles = "all": the search varies optim.lr_scale (every role's lr, the main one and each role's own,
    times 2^k) with optim.lr at its default; the best scale is found as the best lr is, and --lrs-from takes it
    over as each optimizer's optim.lr_scale."""
    run, root = fake
    spec = tmp_path / "bench.toml"
    spec.write_text(textwrap.dedent(FAKE_SPEC.replace("[search]", '[search]\n    roles = "all"')
                                    .format(optimizers=json.dumps(["muon", "adamw"]))))
    assert benchmark.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--train-script",
                           str(tmp_path / "fake_train.py"), "--gpus", "none"]) == 0
    data = json.loads((root / "benchmark.json").read_text())
    assert data["search_key"] == "optim.lr_scale"
    assert data["search"]["muon"]["best"] == pytest.approx(2 ** 0.5)  # 0.05 x sqrt(2): the fake's best for muon
    assert data["search"]["adamw"]["best"] == pytest.approx(1.0) and data["search"]["adamw"]["default"] == 1.0
    assert any("lr_scale-1.414" in p.name for p in (root / "runs").iterdir())
    assert "best lr scale (every role)" in (root / "table.md").read_text()
    given = benchmark_spec.retarget(benchmark_spec.load_benchmark(spec), lrs_from=root / "benchmark.json")
    assert given.extra["muon"]["optim.lr_scale"] == pytest.approx(2 ** 0.5) and given.grid == (0,)
    assert given.extra["adamw"]["optim.adamw.hidden.weight_decay"] == 0.1 and given.search_key == "optim.lr"
    assert benchmark.main(["--spec", str(spec), "--out", str(tmp_path / "sweeps"), "--train-script",
                           str(tmp_path / "fake_train.py"), "--gpus", "none", "--name", "given",
                           "--lrs-from", str(root / "benchmark.json")]) == 0
    given_table = (tmp_path / "sweeps/given/table.md").read_text()
    assert "| muon | 0.05 (given), every role x 1.41 |" in given_table
    assert given_table.startswith("# Benchmark fake_given-lrs:")


def test_lr_scale_multiplies_every_roles_lr():
    from optimizers.registry import build_optimizer
    from training.config import load_config

    cfg = load_config(REPO / "configs/track3_tiny.toml", ["--optim.name=adamw", "--optim.lr=0.002",
                                                         "--optim.adamw.embed.lr=0.3", "--optim.lr_scale=0.5"])
    assert cfg.optim.role_lr("embed") == pytest.approx(0.15) and cfg.optim.role_lr("hidden") == pytest.approx(0.001)
    from model.gpt import GPT
    opt = build_optimizer(GPT(cfg.model).params_by_role(), cfg.optim, __import__("torch").device("cpu"))
    assert {g["role"]: g["lr"] for g in opt.param_groups}["embed"] == pytest.approx(0.15)
    from common.errors import ConfigError
    with pytest.raises(ConfigError, match="optim.lr_scale must be positive"):
        load_config(REPO / "configs/track3_tiny.toml", ["--optim.lr_scale=0"]).optim.check()


def test_packing_runs_k_copies_side_by_side(tmp_path, monkeypatch):
    """scripts/bench/packing.py: k copies of a spec's run at once, each finishing its steps; the JSON has each
    pack's wall and training times and the speed-ups against one run."""
    from scripts.bench import packing

    vocab = tiny_text(tmp_path / "text")
    spec = write_spec(tmp_path, f"""
        name = "pack"
        base = "{REPO / 'configs/track3_tiny.toml'}"
        optimizers = ["adamw"]
        budgets = [3]
        seeds = [0]
        target = 1.0
        [overrides]
        "data.synthetic" = false
        "data.train_files" = "{tmp_path / 'text/shakespeare_train_*.bin'}"
        "data.val_files" = "{tmp_path / 'text/shakespeare_val_*.bin'}"
        "model.vocab_size" = {vocab}
        "model.eot_token" = 0
        "model.width" = 32
        "model.head_dim" = 32
        "model.depth" = 1
        "model.seq_len" = 64
        "data.batch_tokens" = 128
        "eval.tokens" = 256
        "checkpoint.every" = 0
        "checkpoint.final" = false
    """)
    data = packing.main(["--spec", str(spec), "--packs", "1,2", "--steps", "3", "--out", str(tmp_path / "p.json")])
    assert [p["runs"] for p in data["packs"]] == [1, 2] and data["packs"][0]["speedup"] == 1.0
    assert len(data["packs"][1]["train_s"]) == 2 and all(t > 0 for p in data["packs"] for t in p["train_s"])
    assert json.loads((tmp_path / "p.json").read_text())["device"].startswith("CPU")


def test_a_failed_run_is_missing_not_a_seed_that_never_reaches():
    """A rung whose run failed or has not run (None) is 'missing', never '> N'; a diverged run (inf) did run.
    Without a test (one seed) the headline keeps the ratio and says so."""
    spec = small_spec(seeds=(0, 1))
    ladder = {"muon": {50: {0: 2.0, 1: 2.0}, 100: {0: 1.7, 1: None}, 200: {0: 1.5, 1: 1.5}},
              "adamw": {50: {0: 2.2, 1: 2.2}, 100: {0: 1.9, 1: 1.9}, 200: {0: 1.6, 1: math.inf}}}
    scores = scoring.score(spec, ladder, 1.65)
    assert scores["muon"]["reaches"][1] == Reach(None, "missing") and scores["muon"]["mean"] is None
    assert scores["adamw"]["reaches"][1] == Reach(None, "never")  # diverged: ran, did not reach
    line = scoring.headline(spec, scores, 1.65)
    assert "muon n/a (a run failed or is missing)" in line and "adamw > 200" in line
    rows = "\n".join(scoring.steps_rows(spec, {o: {"best": 0.01, "edge": False, "losses": {0.01: 1.0, 0.02: 1.1}}
                                              for o in ladder}, scores))
    assert "failed or missing run" in rows
    one = small_spec(seeds=(0,))
    scores = scoring.score(one, {o: {b: {0: by[b][0]} for b in by} for o, by in LADDER.items()}, 1.7)
    assert "no test" in scoring.headline(one, scores, 1.7)


def test_retarget_a_spec_without_the_default_reference(tmp_path):
    tiny_text(tmp_path / "text")
    bench = small_spec(optimizers=("muon", "scion"), target=2.0, overrides={"eval.tokens": 256})
    got = benchmark_spec.retarget(bench, tmp_path / "text")
    assert got.name == "t_text" and got.target == 2.0  # no reference to read a target off: the loss stays


def test_the_ratio_interval():
    """The ratio's interval: with a reference without spread it is the mean's t interval over the reference's
    mean; the relative errors add in quadrature; a sample of one has none."""
    xs, ref = [60.0, 70.0, 80.0], [100.0, 100.0, 100.0]
    lo, hi = scoring.ratio_interval(xs, ref)
    t_lo, t_hi = scoring.t_interval(xs, 0.95)
    assert (lo, hi) == (pytest.approx(t_lo / 100), pytest.approx(t_hi / 100))
    ys = [90.0, 100.0, 110.0]  # the same relative error as xs' 10/70 scaled: 10/100
    lo, hi = scoring.ratio_interval(xs, ys)
    t = 4.302652729911275  # Student t, 2 degrees of freedom, 97.5%
    half = t * 0.7 * math.hypot(10 / math.sqrt(3) / 70, 10 / math.sqrt(3) / 100)
    assert (lo, hi) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    assert scoring.ratio_interval([60.0], ys) is None


def test_a_target_loss_does_not_travel_to_another_text(tmp_path):
    """A spec's target loss was reached on its own text; on other shards the target becomes the reference's
    worst seed at the largest budget, unless --target names one (a loss or a rule)."""
    tiny_text(tmp_path / "text")
    bench = small_spec(target=2.45, overrides={"eval.tokens": 256})
    assert benchmark_spec.retarget(bench, tmp_path / "text").target == "adamw@largest:max"
    assert benchmark_spec.retarget(bench, tmp_path / "text", target="3.1").target == 3.1
    assert benchmark_spec.retarget(bench, tmp_path / "text", target="muon@100").target == "muon@100"
    assert benchmark_spec.retarget(bench).target == 2.45
    with pytest.raises(SpecError, match="target = 'sgd@largest'"):
        benchmark_spec.retarget(bench, target="sgd@largest")
