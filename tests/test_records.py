"""scripts/records/ (book.py, cli.py) on synthetic run directories: add (copies, never overwrites), table, check
(p-values against cases with known answers) and plot."""

import json
import math
import statistics

import pytest

from scripts.records import book as records
from scripts.records import cli
from scripts.records.book import RecordError

# modded-nanogpt README ("Statistical tests"): 40 final val losses, p=0.0003 against 3.28,
# torch.std_mean -> (0.0040, 3.2777)
MODDED_NANOGPT_LOSSES = [
    3.2759, 3.2781, 3.2791, 3.2771, 3.2838, 3.2749, 3.2793, 3.279, 3.2794, 3.2744, 3.2751,
    3.2845, 3.2736, 3.2783, 3.2793, 3.2779, 3.2756, 3.281, 3.2803, 3.2766, 3.2851, 3.275,
    3.2778, 3.2723, 3.2842, 3.2735, 3.275, 3.2796, 3.2782, 3.2758, 3.2763, 3.2751, 3.2791,
    3.2804, 3.2725, 3.2898, 3.2718, 3.2764, 3.271, 3.2745,
]


def make_run(parent, name, final_loss, status="completed", steps=100, device="NVIDIA H100 80GB HBM3 x8",
             optimizer="muon", train_time_ms=170_000.0):
    """A run directory as train_gpt.py writes it, with a falling validation loss."""
    run = parent / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_000100.pt").write_bytes(b"not copied")
    (run / "config.toml").write_text('name = "test"\n')
    (run / "log.txt").write_text(f"step:{steps}/{steps} val_loss:{final_loss:.4f}\n")
    rows = [{"step": s, "val_loss": final_loss + 3.0 * (1 - s / steps) ** 2, "train_time_ms": train_time_ms * s / steps}
            for s in range(0, steps + 1, 25)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = dict(status=status, final_val_loss=final_loss, steps=steps, train_time_ms=train_time_ms,
                   device=device, optimizer=optimizer, world_size=8, seed=0)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def t_cdf_numeric(t: float, df: int, n: int = 20_000) -> float:
    """P(T <= t) for Student's t by Simpson's rule on its density (independent of scipy)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(x):
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    a, h = t - 60.0, 60.0 / n
    total = pdf(a) + pdf(t) + sum((4 if i % 2 else 2) * pdf(a + i * h) for i in range(1, n))
    return total * h / 3


# ----------------------------------------------------------------------------------------------
# check: p-values


def test_p_value_two_degrees_of_freedom_closed_form():
    """n = 3: t = -sqrt(3) exactly, and for 2 degrees of freedom P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    result = records.t_test_below([3.27, 3.275, 3.28], target=3.28)
    t = -math.sqrt(3)
    assert result.n == 3 and result.mean == pytest.approx(3.275) and result.std == pytest.approx(0.005)
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.p == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-9)  # 0.11270


def test_p_value_one_degree_of_freedom_is_cauchy():
    """n = 2: t = -3, and for 1 degree of freedom P(T <= t) = 1/2 + atan(t) / pi."""
    result = records.t_test_below([3.26, 3.27], target=3.28)
    assert result.t == pytest.approx(-3.0, rel=1e-9)
    assert result.p == pytest.approx(0.5 + math.atan(-3.0) / math.pi, rel=1e-9)  # 0.10242


def test_p_value_modded_nanogpt_example():
    result = records.t_test_below(MODDED_NANOGPT_LOSSES, target=3.28)
    n, mean, std = 40, statistics.fmean(MODDED_NANOGPT_LOSSES), statistics.stdev(MODDED_NANOGPT_LOSSES)
    assert (result.n, round(result.mean, 4), round(result.std, 4)) == (40, 3.2777, 0.0040)  # as in their README
    assert result.t == pytest.approx((mean - 3.28) / (std / math.sqrt(n)))
    assert f"{result.p:.4f}" == "0.0003"  # their README: p=0.0003
    assert result.p == pytest.approx(t_cdf_numeric(result.t, n - 1), rel=1e-6)


def test_p_value_edge_cases():
    assert records.t_test_below([3.0, 3.0], 3.28).p == 0.0  # no spread, below target
    assert records.t_test_below([3.3, 3.3], 3.28).p == 1.0
    assert records.t_test_below([3.30, 3.31, 3.32], 3.28).p > 0.9
    with pytest.raises(RecordError, match="at least 2"):
        records.t_test_below([3.1], 3.28)


def test_check_command(tmp_path, capsys):
    for i, loss in enumerate(MODDED_NANOGPT_LOSSES[:10]):
        make_run(tmp_path / "rec", f"seed{i}", loss)
    make_run(tmp_path / "rec", "seed_diverged", float("nan"), status="diverged")
    assert cli.main(["check", str(tmp_path / "rec"), "--target", "3.30"]) == 0
    out = capsys.readouterr().out
    assert "n=10" in out and "left out" in out and "seed_diverged" in out and "p < 0.01: yes" in out
    assert cli.main(["check", str(tmp_path / "rec"), "--target", "3.28"]) == 1  # 10 runs: not enough
    # run directories can be given one by one too
    runs = [str(tmp_path / "rec/seed0"), str(tmp_path / "rec/seed1")]
    assert cli.main(["check", *runs, "--target", "3.29"]) in (0, 1)
    assert "n=2" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# add and table


def test_add_copies_runs_and_never_overwrites(tmp_path):
    runs = [make_run(tmp_path / "runs", f"seed{i}", 3.27 + i / 1000) for i in range(3)]
    root = tmp_path / "records"
    dest = records.add_record(runs, track="124m", title="Muon baseline, lr=0.05!", root=root, date="2026-01-26")
    assert dest == root / "124m" / "2026-01-26_muon-baseline-lr-0.05"
    for run in runs:
        assert sorted(p.name for p in (dest / run.name).iterdir()) == sorted(records.RUN_FILES)  # no checkpoints
        assert (dest / run.name / "summary.json").read_text() == (run / "summary.json").read_text()
    before = (dest / "seed0" / "log.txt").read_text()
    (runs[0] / "log.txt").write_text("changed")
    with pytest.raises(RecordError, match="never overwritten"):
        records.add_record(runs, "124m", "Muon baseline, lr=0.05!", root, "2026-01-26")
    assert (dest / "seed0" / "log.txt").read_text() == before
    more = make_run(tmp_path / "runs", "seed3", 3.274)
    records.add_record([more], "124m", "Muon baseline, lr=0.05!", root, "2026-01-26")  # a new seed joins
    assert (dest / "seed3" / "summary.json").is_file()


@pytest.mark.parametrize("kwargs, message", [
    (dict(status="diverged"), "only completed runs"),
    (dict(status="interrupted"), "only completed runs"),
    (dict(status="failed"), "only completed runs"),  # a crash mid-run is never a record
])
def test_add_refuses_unfinished_runs(tmp_path, kwargs, message):
    run = make_run(tmp_path / "runs", "r", 3.3, **kwargs)
    with pytest.raises(RecordError, match=message):
        records.add_record([run], "t", "x", tmp_path / "records")
    assert not (tmp_path / "records").exists()


def test_add_refuses_incomplete_directories(tmp_path):
    run = make_run(tmp_path / "runs", "r", 3.3)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(RecordError, match="missing metrics.jsonl"):
        records.add_record([run], "t", "x", tmp_path / "records")
    a, b = make_run(tmp_path / "a", "same", 3.3), make_run(tmp_path / "b", "same", 3.3)
    with pytest.raises(RecordError, match="share the name"):
        records.add_record([a, b], "t", "x", tmp_path / "records")


def test_table(tmp_path):
    root = tmp_path / "records"
    losses = [3.2759, 3.2781, 3.2791]
    runs = [make_run(tmp_path / "runs", f"s{i}", x, train_time_ms=1000.0 * (170 + i)) for i, x in enumerate(losses)]
    records.add_record(runs, "124m", "baseline", root, "2026-01-26")
    cpu = make_run(tmp_path / "runs", "cpu0", 1.16, device="cpu", optimizer="adamw", steps=200)
    records.add_record([cpu], "cpu-smoke", "smoke", root, "2026-02-01")
    text = records.write_table(root).read_text()
    assert text == records.render_table(root)
    row = next(line for line in text.splitlines() if "[baseline]" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean, std = statistics.fmean(losses), statistics.stdev(losses)
    assert cells == ["[baseline](124m/2026-01-26_baseline/)", "2026-01-26", "muon", "3",
                     f"{mean:.4f} ± {std:.4f}", "100", "171.0 s", "NVIDIA H100 80GB HBM3 x8"]
    assert "## 124m" in text and "## cpu-smoke" in text
    assert "| [smoke](cpu-smoke/2026-02-01_smoke/) | 2026-02-01 | adamw | 1 | 1.1600 | 200 |" in text
    assert cli.main(["--root", str(root), "table"]) == 0


def test_table_without_records(tmp_path):
    assert "No records yet" in records.render_table(tmp_path / "nothing")


def test_cli_add(tmp_path, capsys):
    runs = [make_run(tmp_path / "runs", f"s{i}", 3.27) for i in range(2)]
    args = ["--root", str(tmp_path / "records"), "add", *map(str, runs), "--track", "124m", "--name", "cli test",
            "--date", "2026-03-01"]
    assert cli.main(args) == 0
    assert (tmp_path / "records/124m/2026-03-01_cli-test/s1/log.txt").is_file()
    assert "cli test" not in (tmp_path / "records/README.md").read_text()  # the table names the folder
    assert "[cli-test](124m/2026-03-01_cli-test/)" in (tmp_path / "records/README.md").read_text()  # add regenerates it
    assert cli.main(args) == 2 and "already exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# plot


def test_plot(tmp_path):
    a = [make_run(tmp_path / "a", f"s{i}", 3.27 + i / 100) for i in range(2)]
    b = make_run(tmp_path / "b", "only", 3.4, train_time_ms=90_000.0)
    out = cli.plot_curves([a[0].parent, b], tmp_path / "plots" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert cli.main(["plot", str(b), "--out", str(tmp_path / "one.png"), "--target", "3.28"]) == 0
    with pytest.raises(RecordError, match="holds no run"):
        records.find_runs(tmp_path / "plots")


def test_a_study_record_names_its_source_relative_to_the_repository(tmp_path, monkeypatch):
    """record.json's source is sweeps/<name> for a folder inside the repository (no machine's paths in a
    record), the absolute path for one outside it."""
    folder = tmp_path / "repo" / "sweeps" / "bench"
    make_run(folder / "runs", "a_seed-0", 2.5, device="cpu")
    monkeypatch.setattr(records, "REPO", tmp_path / "repo")
    dest = records.add_study(folder, "cpu-test", "inside", "benchmark", root=tmp_path / "records", date="2026-12-05")
    assert json.loads((dest / "record.json").read_text())["source"] == "sweeps/bench"
    monkeypatch.setattr(records, "REPO", tmp_path / "elsewhere")
    dest = records.add_study(folder, "cpu-test", "outside", "benchmark", root=tmp_path / "records", date="2026-12-05")
    assert json.loads((dest / "record.json").read_text())["source"] == str(folder.resolve())


def test_a_study_record_re_scored_in_place_is_refreshed(tmp_path):
    """More seeds run into a kept study record: refresh_study takes the new headline and run count into
    record.json, drops the sweep's logs/ copy and rewrites the table; add_study had written the old ones."""
    folder = tmp_path / "sweeps" / "bench"
    make_run(folder / "runs", "a_seed-0", 2.5, device="cpu")
    (folder / "benchmark.json").write_text(json.dumps({"headline": "muon 70 (3 seeds)"}))
    root = tmp_path / "records"
    dest = records.add_study(folder, "cpu-test", "bench", "benchmark", root=root, date="2026-12-05")
    assert json.loads((dest / "record.json").read_text())["runs"] == 1
    make_run(dest / "runs", "a_seed-1", 2.4, device="cpu")  # what the re-run adds
    (dest / "logs").mkdir()
    (dest / "logs" / "a_seed-1.txt").write_text("stdout")
    (dest / "benchmark.json").write_text(json.dumps({"headline": "muon 68 (5 seeds)"}))
    table = records.refresh_study(dest)
    info = json.loads((dest / "record.json").read_text())
    assert info["headline"] == "muon 68 (5 seeds)" and info["runs"] == 2 and info["kind"] == "benchmark"
    assert not (dest / "logs").exists()
    assert table == root / "README.md" and "muon 68 (5 seeds)" in table.read_text()
