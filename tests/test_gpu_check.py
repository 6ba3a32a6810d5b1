"""scripts/gpu/check.py on a CPU machine: the immediate exit without CUDA, stage selection, the runner
and the records layout with fake stages, each stage's reader on made-up outputs, and the two stages
whose CPU side can run here for real (the step worker and the short training run)."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from scripts.gpu import check as gpu_check
from scripts.gpu import running, stages
from scripts.gpu.running import Stage
from scripts.gpu.stages import STAGES, Settings
from tests.test_train import SMOKE, TINY

REPO = Path(__file__).resolve().parents[1]
FAKE_ENV = {"time": "2026-01-02T03:04:05", "device": "Fake GPU 80GB", "torch": "x", "triton": None}


def test_without_cuda_it_exits_at_once_with_a_clear_message_and_its_own_code(tmp_path):
    out = tmp_path / "never"
    done = subprocess.run([sys.executable, "-m", "scripts.gpu.check", "--out-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == running.EXIT_NO_GPU == 77
    assert "no CUDA device" in done.stderr and "python -m pytest" in done.stderr
    assert not out.exists()  # nothing measured, nothing written


def test_stages_are_chosen_by_name_and_run_in_the_fixed_order():
    assert [s.name for s in gpu_check.select_stages("record,ns, tests")] == ["ns", "tests", "record"]
    assert [s.name for s in gpu_check.select_stages(",".join(STAGES))] == list(STAGES)
    for bad in ("ns,bogus", "", " , "):
        with pytest.raises(ValueError, match="choose from ns,step,step_group,train,tests,record"):
            gpu_check.select_stages(bad)
    assert gpu_check.parse_budgets(["train=200", "ns=30,step=99.5"]) == {"train": 200, "ns": 30, "step": 99.5}
    for bad in (["train"], ["bogus=3"], ["ns=fast"]):
        with pytest.raises(ValueError, match="<stage>=<seconds>"):
            gpu_check.parse_budgets(bad)


def test_default_budgets_fit_one_borrowed_gpu_command_and_the_dry_run_prints_the_plan(capsys):
    """The measurements first, then the tests; together within one command of at most 9 minutes (a borrowed
    GPU: 10 minutes per command, 15 in all with the machine's start)."""
    default = [s for s in STAGES.values() if s.skip(Settings()) is None]
    assert [s.name for s in default] == ["ns", "step", "step_group", "train", "tests"]  # record needs --record-log
    assert sum(s.budget_s for s in default) <= 9 * 60
    assert gpu_check.main(["--dry-run", "--budget", "ns=40"]) == 0
    out = capsys.readouterr().out
    assert "record     skipped: no --record-log" in out and "budgets add up to 510 s" in out
    assert "pytest -m gpu" in out and "--data.batch_tokens=49152" in out
    assert f"--eval.tokens={stages.VAL_TOKENS}" in out and "--distributed.one_rank_group=true" in out
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--stages", "nope"])
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "positional"])


def test_the_train_stage_prefers_shakespeare_then_the_configs_shards_then_synthetic(tmp_path, monkeypatch):
    settings = Settings(config=str(REPO / "configs/speedrun_124m.toml"))
    chars = tmp_path / "shakespeare_char"
    chars.mkdir()
    (chars / "shakespeare_train_000000.bin").write_bytes(b"")
    (chars / "shakespeare_val_000000.bin").write_bytes(b"")
    assert stages.shakespeare_overrides(chars) is None  # no vocab.json: not a finished folder
    (chars / "vocab.json").write_text(json.dumps({"vocab_size": 84, "separator_id": 0}))
    data = stages.shakespeare_overrides(chars)
    assert "--model.vocab_size=84" in data and "--model.eot_token=0" in data
    assert f"--eval.tokens={stages.SHAKESPEARE_EVAL_TOKENS}" in data
    monkeypatch.setattr(stages, "shakespeare_overrides", lambda: data)
    cmd = STAGES["train"].command(settings, tmp_path, 100)
    assert f"--data.train_files={chars}/shakespeare_train_*.bin" in cmd and "--data.synthetic=true" not in cmd
    monkeypatch.setattr(stages, "shakespeare_overrides", lambda: None)
    cmd = STAGES["train"].command(settings, tmp_path, 100)
    fineweb = all(list((REPO / "data/fineweb10B").glob(f"fineweb_{k}_*.bin")) for k in ("train", "val"))
    assert ("--data.synthetic=true" in cmd) != fineweb
    real = Settings(config=str(REPO / "configs/speedrun_124m.toml"),
                    overrides=(f"--data.train_files={REPO}/data/synthetic/*/synthetic_train_*.bin",
                               f"--data.val_files={REPO}/data/synthetic/*/synthetic_val_*.bin"))
    if list((REPO / "data/synthetic").glob("*/synthetic_train_*.bin")):
        assert "--data.synthetic=true" not in STAGES["train"].command(real, tmp_path, 100)


# ------------------------------------------------------------------------------------------------
# the runner and the records layout, with fake stages


def _python(code: str):
    return lambda settings, scratch, budget: [sys.executable, "-c", code.replace("SCRATCH", str(scratch))]


def _read_value(settings, scratch, output):
    value = json.loads((scratch / "v.json").read_text())["v"]
    return {"figures": {"v": value}, "rows": [running.row("value", str(value), ">= 2", value >= 2)],
            "problems": [], "raw": {"v": value}}


def fake_stages(out_dir: Path) -> list[Stage]:
    write = "import json; json.dump({'v': 2}, open('SCRATCH/v.json', 'w')); print('wrote v')"
    # the second stage proves the first one's JSON is on disk before the next stage starts
    check_first = (f"import json, pathlib; d = json.load(open({str(out_dir / 'a.json')!r})); "
                   "json.dump({'v': d['figures']['v'] - 1}, open('SCRATCH/v.json', 'w'))")
    return [
        Stage("a", 60, "writes a figure", _python(write), _read_value),
        Stage("b", 60, "reads a's JSON", _python(check_first), _read_value),
        Stage("c", 1, "runs past its budget", _python("import time; print('started', flush=True); time.sleep(60)"),
              _read_value),
        Stage("d", 60, "is skipped", _python("raise SystemExit(9)"), _read_value, skip=lambda s: "no input"),
        Stage("e", 60, "fails", _python("import sys; print('boom'); sys.exit(3)"), _read_value),
    ]


def test_each_stage_writes_its_json_when_it_ends_and_nothing_is_overwritten(tmp_path, capsys):
    out_dir = tmp_path / "records" / "gpu" / "2026-01-02_fake-gpu"
    results = running.run_check(fake_stages(out_dir), Settings(), out_dir, FAKE_ENV)
    assert [r["status"] for r in results] == ["ok", "ok", "timed_out", "skipped", "failed"]
    assert [r["figures"]["v"] for r in results[:2]] == [2, 1]
    assert results[1]["rows"][0]["verdict"] == "missed"  # a missed target is reported, not a failure
    timed_out = results[2]
    assert timed_out["returncode"] is None and "killed at its budget of 1 s" in timed_out["problems"][0]
    assert "started" in timed_out["output_tail"]  # output before the kill is kept
    assert results[3]["reason"] == "no input" and "command" not in results[3]
    assert results[4]["returncode"] == 3 and results[4]["problems"][0] == "exit code 3"
    assert "boom" in (out_dir / "e.log.txt").read_text()

    saved = json.loads((out_dir / "check.json").read_text())
    assert saved["stages"] == ["a", "b", "c", "d", "e"] and saved["environment"] == FAKE_ENV
    assert [r["status"] for r in saved["results"]] == [r["status"] for r in results]
    one = json.loads((out_dir / "a.json").read_text())
    assert one["figures"] == {"v": 2} and one["environment"] == FAKE_ENV and one["log"] == "a.log.txt"

    text = running.table(results)
    assert "timed_out" in text and "problem: killed at its budget" in text and "no input" in text
    assert [line.split()[0] for line in text.splitlines()[1:] if line[:1] != " "] == ["a", "b", "c", "d", "e"]

    again = running.run_check(fake_stages(out_dir)[:1], Settings(), out_dir, FAKE_ENV)
    assert again[0]["log"] == "a-2.log.txt" and (out_dir / "a-2.json").exists() and (out_dir / "check-2.json").exists()
    assert json.loads((out_dir / "check.json").read_text()) == saved  # the first run's files are untouched


def test_a_time_limit_clips_budgets_and_skips_stages_that_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(running, "MIN_STAGE_S", 1.5)
    out_dir = tmp_path / "out"
    stages = fake_stages(out_dir)
    settings = Settings(budgets={"c": 30}, time_limit_s=2.5)
    results = running.run_check([stages[2], stages[0]], settings, out_dir, FAKE_ENV)
    assert results[0]["status"] == "timed_out" and results[0]["budget_s"] <= 2.5  # clipped from 30 s
    assert results[1]["status"] == "skipped" and results[1]["reason"].startswith("not started")


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (killed; its parent died before reaping it)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


def test_sigterm_to_the_check_takes_the_running_stage_down_with_it(tmp_path):
    """A time limit from outside (SIGTERM) must not leave a stage running on the GPU."""
    log, child_log = tmp_path / "parent.txt", tmp_path / "child.txt"
    parent = ("import sys; from pathlib import Path; "
              "from scripts.gpu.running import exit_on_sigterm, run_logged; exit_on_sigterm(); "
              f"run_logged([sys.executable, '-c', 'import os, time; print(os.getpid(), flush=True); time.sleep(120)'], "
              f"Path({str(child_log)!r}), 120)")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", parent], stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if child_log.exists() and child_log.read_text().strip():
                break
            time.sleep(0.05)
        child = int(child_log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        for _ in range(100):
            if _gone(child):
                break
            time.sleep(0.05)
        assert _gone(child)
    finally:
        proc.kill()


def test_records_folder_is_named_by_date_and_device():
    import datetime

    path = gpu_check.default_out_dir("NVIDIA H100 80GB HBM3", datetime.date(2026, 1, 2))
    assert path == REPO / "records" / "gpu" / "2026-01-02_nvidia-h100-80gb-hbm3"
    assert (REPO / "records" / "gpu" / "README.md").exists()


# ------------------------------------------------------------------------------------------------
# readers of each stage's output


def test_tests_reader_counts_the_junit_outcomes(tmp_path):
    (tmp_path / "tests.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped message="no"/></testcase>'
        '<testcase classname="tests.test_b" name="test_err"><error message="y"/></testcase>'
        '</testsuite></testsuites>')
    read = stages.tests_read(Settings(), tmp_path, "")
    assert {k: read["figures"][k] for k in ("passed", "failed", "errors", "skipped")} == dict(
        passed=1, failed=1, errors=1, skipped=1)
    assert read["figures"]["failing"] == ["tests.test_a::test_bad", "tests.test_b::test_err"]
    assert read["problems"] and read["rows"][0]["verdict"] == "missed"
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite name="pytest"/></testsuites>')
    assert stages.tests_read(Settings(), tmp_path, "")["problems"] == ["no test carries the gpu marker"]


def test_newton_schulz_reader_judges_the_targets(tmp_path):
    rows = [{"shape": [48, 768, 768], "torch_ms": 1.0, "triton_ms": 0.9, "speedup_triton_vs_torch": 1.11},
            {"shape": [12, 768, 3072], "torch_ms": 2.0, "triton_ms": 1.0, "speedup_triton_vs_torch": 2.0},
            {"shape": [1, 4096, 4096], "torch_ms": 3.0, "triton_ms": 2.5, "speedup_triton_vs_torch": 1.2}]
    (tmp_path / "ns.json").write_text(json.dumps({"dtype": "bfloat16", "rows": rows}))
    read = stages.ns_read(Settings(), tmp_path, "")
    assert [(r["target"], r["verdict"]) for r in read["rows"]] == [("", ""), (">= 1.3x", "met"), (">= 1.5x", "missed")]
    assert read["problems"] == [] and read["figures"]["1x4096x4096"]["speedup_triton_vs_torch"] == 1.2
    rows[1] = {"shape": [12, 768, 3072], "torch_ms": 2.0, "triton_error": "CompilationError: ..."}
    (tmp_path / "ns.json").write_text(json.dumps({"dtype": "bfloat16", "rows": rows}))
    problems = stages.ns_read(Settings(), tmp_path, "")["problems"]
    assert problems == ["12x768x3072: triton_error CompilationError: ..."]


def _step_json(optimizer_ms, graphs):
    parts = {"timer": "cuda_events", "forward_backward_ms": 90.0, "optimizer_ms": optimizer_ms, "comm_wait_ms": 0.0,
             "gather_wait_ms": 0.0, "step_ms": 90.0 + optimizer_ms,
             "optimizer_fraction": optimizer_ms / (90 + optimizer_ms)}
    return {"tokens_per_step": 49152, "step_ms_mean": 95.0, "step_ms_median": 94.0, "tokens_per_s": 517000.0,
            "mfu": 0.4, "peak_memory_mib": 30000.0, "breakdown": parts, "graphs_compiled_while_timed": graphs}


def test_step_reader_judges_the_optimizer_share_and_recompiles(tmp_path):
    (tmp_path / "step.json").write_text(json.dumps(_step_json(4.0, 0)))
    read = stages.step_read(Settings(), tmp_path, "")
    share = next(r for r in read["rows"] if "optimizer share" in r["figure"])
    assert share["value"] == "4.3%" and share["verdict"] == "met" and read["problems"] == []
    (tmp_path / "step.json").write_text(json.dumps(_step_json(9.0, 3)))
    read = stages.step_read(Settings(), tmp_path, "")
    assert next(r for r in read["rows"] if "optimizer share" in r["figure"])["verdict"] == "missed"
    assert read["problems"] == ["3 graphs compiled during the timed steps (recompiles)"]


def _run_dir(tmp_path, losses, **summary):
    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * (i + 1), "train_loss": x}) + "\n"
                                               for i, x in enumerate(losses)))
    base = {"status": "completed", "steps": 100, "final_val_loss": 4.0, "step_avg_ms": 99.0,
            "peak_memory_mib": 40000.0, "synthetic_data": True, "compile_time_s": 60.0}
    (run / "summary.json").write_text(json.dumps({**base, **summary}))


def test_train_reader_checks_loss_completion_and_eager_fallbacks(tmp_path):
    _run_dir(tmp_path, [9.0, 6.0, 5.0], recompiles=0, compile_fallbacks=0, graph_breaks=0, graphs_compiled=4)
    read = stages.train_read(Settings(), tmp_path, "")
    assert read["problems"] == [] and read["figures"]["compile_fallbacks"] == 0
    assert next(r for r in read["rows"] if "compile fallbacks" in r["figure"])["verdict"] == "met"

    _run_dir(tmp_path, [9.0, 6.0, 5.0])  # a trainer that does not count them yet: unknown, not zero
    read = stages.train_read(Settings(), tmp_path, "")
    assert read["figures"]["compile_fallbacks"] == "unknown" and read["problems"] == []
    assert next(r for r in read["rows"] if "compile fallbacks" in r["figure"])["verdict"] == ""
    _run_dir(tmp_path, [9.0, 6.0, 5.0], compile_fallbacks=None, recompiles=None)
    assert stages.train_read(Settings(), tmp_path, "")["figures"]["compile_fallbacks"] == "unknown"

    _run_dir(tmp_path, [9.0, 8.8], compile_fallbacks=2, graph_breaks=1, status="failed", error="boom")
    warning = "W0102 torch._dynamo hit config.recompile_limit (8)\n   function: 'forward'\n"
    read = stages.train_read(Settings(), tmp_path, warning)
    assert len(read["problems"]) == 5  # fallbacks and a graph break in the summary, the warning, status, loss
    _run_dir(tmp_path, [4.4, 2.1], synthetic_data=False, data={"train_files": ["x/shakespeare_train_000000.bin"]})
    assert stages.train_read(Settings(), tmp_path, "")["figures"]["data"] == "shakespeare_char"


def test_step_reader_judges_the_validation_memory(tmp_path):
    raw = _step_json(1.0, 0)
    raw["validation"] = {"tokens": stages.VAL_TOKENS, "seconds": 12.0, "loss": 10.8, "peak_memory_mib": 40000.0}
    (tmp_path / "step.json").write_text(json.dumps(raw))
    memory = next(r for r in stages.step_read(Settings(), tmp_path, "")["rows"] if "validation of" in r["figure"])
    assert memory["verdict"] == "met" and "10,485,760 tokens" in memory["figure"]
    raw["validation"]["peak_memory_mib"] = 90000.0
    (tmp_path / "step.json").write_text(json.dumps(raw))
    memory = next(r for r in stages.step_read(Settings(), tmp_path, "")["rows"] if "validation of" in r["figure"])
    assert memory["verdict"] == "missed"
    raw["validation"] = None  # the step_group stage does not validate
    (tmp_path / "step.json").write_text(json.dumps(raw))
    assert not any("validation of" in r["figure"] for r in stages.step_read(Settings(), tmp_path, "")["rows"])


def test_record_reader_reports_both_and_the_ratio(tmp_path):
    raw = {"tokens_per_gpu": 49152, "steps": 100, "record": {"step_avg_ms": 100.0}, "ours": {"step_avg_ms": 97.0},
           "ratio": 0.97}
    (tmp_path / "record.json").write_text(json.dumps(raw))
    read = stages.record_read(Settings(), tmp_path, "")
    assert read["rows"][-1]["value"] == "0.970" and read["rows"][-1]["verdict"] == "met" and not read["problems"]
    raw.update(ours={"step_avg_ms": None, "error": "ours exited with code 1"}, ratio=None)
    (tmp_path / "record.json").write_text(json.dumps(raw))
    read = stages.record_read(Settings(), tmp_path, "")
    assert read["problems"] == ["ours: ours exited with code 1"] and read["rows"][1]["value"] == "failed"
    assert STAGES["record"].skip(Settings()) and STAGES["record"].skip(Settings(record_log=str(tmp_path / "no.txt")))
    (tmp_path / "log.txt").write_text("x")
    settings = Settings(record_log=str(tmp_path / "log.txt"), overrides=("--model.depth=2",))
    assert STAGES["record"].skip(settings) is None
    cmd = STAGES["record"].command(settings, tmp_path, 330)
    assert cmd[1:3] == ["-m", "scripts.gpu.side_by_side"] and "--timeout-s=150" in cmd and cmd[-1] == "--model.depth=2"


# ------------------------------------------------------------------------------------------------
# the CPU side of the real stages


@pytest.fixture
def one_thread(monkeypatch):
    """Toy models on 2 shared cores: one thread is 10x faster than two fighting other processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stages' subprocesses
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("stage", ["step", "step_group"])
def test_the_step_stages_end_to_end_from_the_command_line(tmp_path, monkeypatch, one_thread, capsys, stage):
    """main() with CUDA faked: the step stage's own command runs the worker (toy model, CPU), whose whole
    step and breakdown land in <stage>.json and check.json, and in the table; step_group runs it in a
    one-rank process group (the matrices orthogonalized by this rank's sharded step), step validates too.
    The archive holds every file."""
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu_check, "environment", lambda: FAKE_ENV)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = gpu_check.main(["--stages", stage, "--config", SMOKE, *TINY, "--warmup=1", "--steps=2",
                               "--tokens-per-gpu=1024", "--out-dir", str(tmp_path / "out"),
                               "--archive", str(tmp_path / "check.tar.gz")])
    finally:
        signal.signal(signal.SIGTERM, handler)
    saved = json.loads((tmp_path / "out" / f"{stage}.json").read_text())
    assert code == 0, saved["problems"]
    assert saved["raw"]["one_rank_group"] == (stage == "step_group")
    assert (saved["raw"]["orthogonalized"] > 0) == (stage == "step_group")
    assert (saved["figures"]["validation"] is not None) == (stage == "step")
    with tarfile.open(tmp_path / "check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {f"{stage}.json", f"{stage}.log.txt", "check.json", "table.txt"} <= names
    tmp_path = tmp_path / "out"
    parts = saved["raw"]["breakdown"]
    assert parts["timer"] == "host" and parts["timed_steps"] == 2
    assert (parts["comm_wait_ms"] == 0) == (stage == "step")  # one process: nothing to wait for
    assert abs(parts["step_ms"] - parts["forward_backward_ms"] - parts["optimizer_ms"]) < 1e-6
    assert saved["raw"]["timed_steps"] == 2 and saved["raw"]["tokens_per_step"] == 1024
    assert saved["figures"]["step_ms_mean"] > 0 and saved["environment"] == FAKE_ENV
    assert json.loads((tmp_path / "check.json").read_text())["results"][0]["status"] == "ok"
    out = capsys.readouterr().out
    assert "step, 1,024 tokens (mean / median)" in out and "optimizer share of the step" in out


def test_train_stage_runs_and_reads_a_real_run(tmp_path, one_thread, monkeypatch):
    """The stage's own command (smoke architecture at toy size, synthetic data) and its reader."""
    monkeypatch.setattr(stages, "shakespeare_overrides", lambda: None)  # whether or not data/shakespeare_char exists
    keep = tuple(o for o in TINY if o.split("=")[0] in (
        "--model.width", "--model.heads", "--model.depth", "--model.value_embeds", "--model.window_pattern",
        "--model.seq_len", "--model.window", "--data.micro_batch_size"))
    settings = Settings(config=SMOKE, overrides=(*keep, "--eval.tokens=2048"), tokens_per_gpu=1024, train_steps=12)
    (tmp_path / "scratch").mkdir()
    result = running.run_stage(STAGES["train"], settings, tmp_path / "scratch", tmp_path / "train.log.txt", None)
    assert result["status"] == "ok", result["problems"]
    figures = result["figures"]
    assert figures["steps"] == 12 and figures["data"] == "synthetic" and figures["fallback_warnings"] == 0
    assert figures["last_train_loss"] <= figures["first_train_loss"] - stages.LOSS_DROP
    assert not any("validation of" in r["figure"] for r in result["rows"])  # 2,048 tokens, not the speedrun's


def test_the_prepared_first_run_writes_its_environment_and_stops_without_a_gpu(tmp_path):
    """scripts/gpu/first_run.sh, the one command of a borrowed GPU: here (no CUDA) it records the environment
    and passes on gpu_check's exit code 77; `record` without the record's log stops with 2 and says where
    the log goes; `benchmark` without CUDA stops with 77 too; an unknown run is refused."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "scripts/gpu/first_run.sh")
    done = subprocess.run(["bash", script, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == running.EXIT_NO_GPU, done.stdout + done.stderr
    assert "torch" in (tmp_path / "out" / "environment.txt").read_text()
    assert "no CUDA device" in (tmp_path / "out" / "gpu_check.txt").read_text()
    done = subprocess.run(["bash", script, str(tmp_path / "out"), "record"], env={**env, "RECORD_LOG": "nope.txt"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no record log at nope.txt" in done.stdout
    done = subprocess.run(["bash", script, str(tmp_path / "out"), "benchmark"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == running.EXIT_NO_GPU and "the packed benchmark is for a GPU" in done.stdout
    done = subprocess.run(["bash", script, str(tmp_path / "out"), "bogus"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown run 'bogus'" in done.stdout


def test_train_stage_on_character_shards_from_a_text(tmp_path, one_thread, monkeypatch):
    """The train stage on real text as the borrowed GPU runs it: character shards (data/shakespeare.py --text),
    their vocabulary and separator handed to a config whose own data is synthetic; the loss falls."""
    from data import shakespeare

    text = tmp_path / "play.txt"
    text.write_text("\n\n".join(f"ACT {i}. To be, or not to be, that is the question: whether 'tis nobler in "
                                f"the mind to suffer the slings and arrows of outrageous fortune. " * 6 for i in range(60)))
    shakespeare.main(["--text", str(text), "--out", str(tmp_path / "chars")])
    overrides = stages.shakespeare_overrides(tmp_path / "chars")
    monkeypatch.setattr(stages, "shakespeare_overrides", lambda: overrides)
    keep = tuple(o for o in TINY if o.split("=")[0] in (
        "--model.width", "--model.heads", "--model.depth", "--model.value_embeds", "--model.window_pattern",
        "--model.seq_len", "--model.window", "--data.micro_batch_size"))
    settings = Settings(config=SMOKE, overrides=(*keep, "--eval.tokens=2048"), tokens_per_gpu=1024, train_steps=12)
    (tmp_path / "scratch").mkdir()
    result = running.run_stage(STAGES["train"], settings, tmp_path / "scratch", tmp_path / "train.log.txt", None)
    assert result["status"] == "ok", result["problems"]
    assert result["figures"]["data"] == "shakespeare_char"
