"""What a run does when the machines under it misbehave (issue 27), and the files it leaves: strict JSON in
every outcome, expected errors as messages (the traceback in log.txt only), a full disk while writing, a
scheduler's preemption notice, NCCL's dead-peer settings. The elastic restart (torchrun --max-restarts) is
tests/test_distributed.py's test_elastic_restart_resumes_from_the_last_checkpoint."""

import json
import os
import signal

import pytest

from common import strict_json
from common.exit_codes import EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from tests.test_train import run
from training.trainer import Trainer


def strict_files(run_dir):
    """Every JSON and JSON-lines file under run_dir, parsed by a strict parser (NaN/Infinity refused)."""
    parsed = {}
    for path in sorted(run_dir.rglob("*.json")) + sorted(run_dir.rglob("*.jsonl")):
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [text]
        parsed[path.name] = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{path}: {c}")) for line in lines]
    return parsed


def failing_at(step_to_fail, exc):
    original = Trainer.step

    def step(self, step):
        if step == step_to_fail:
            raise exc
        return original(self, step)
    return step


@pytest.mark.parametrize("outcome", ["failed_at_step_0", "diverged", "interrupted", "completed"])
def test_every_json_file_of_every_outcome_is_strict(tmp_path, monkeypatch, outcome):
    """Item 1: a run that fails at step 0 used to write "step_avg_ms": NaN. Non-finite numbers are null now,
    with the reason beside them ("nonfinite": {"step_avg_ms": "nan"})."""
    original = Trainer.step
    if outcome == "failed_at_step_0":
        monkeypatch.setattr(Trainer, "step", failing_at(0, RuntimeError("boom")))
    elif outcome == "diverged":
        monkeypatch.setattr(Trainer, "step", lambda self, s: original(self, s) * (float("nan") if s >= 3 else 1))
    elif outcome == "interrupted":
        def interrupted(self, s):
            if s == 3:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: stop after this step with a checkpoint
            return original(self, s)
        monkeypatch.setattr(Trainer, "step", interrupted)
    code, run_dir = run(tmp_path)
    expected = {"failed_at_step_0": EXIT_FAILED, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED,
                "completed": EXIT_OK}[outcome]
    assert code == expected
    files = strict_files(run_dir)
    summary = files["summary.json"][0]
    assert summary["status"] == outcome.split("_")[0]
    for key, value in summary.items():
        assert value is not None or key in summary.get("nonfinite", {}) or key not in _NUMBERS, key
    if outcome == "failed_at_step_0":
        assert summary["step_avg_ms"] is None and summary["nonfinite"]["step_avg_ms"] == "nan"
    if outcome == "diverged":
        assert summary["final_val_loss"] is None or isinstance(summary["final_val_loss"], float)


_NUMBERS = ("step_avg_ms", "train_time_ms", "tokens_per_s")


def test_strict_json_round_trip():
    text = strict_json.dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": float("-inf")}, "e": 2})
    back = strict_json.loads(text)
    assert back == {"a": None, "b": [1.0, None], "c": {"d": None, "nonfinite": {"d": "-inf"}}, "e": 2,
                    "nonfinite": {"a": "nan", "b[1]": "inf"}}
    with pytest.raises(ValueError, match="not strict JSON"):
        strict_json.loads('{"a": NaN}')


def test_a_data_error_mid_run_is_a_message_and_the_traceback_is_in_the_log(tmp_path, capsys):
    """Item 2: token ids beyond the vocabulary in the second training shard, opened at about step 5: exit 2,
    the file named on the screen without a traceback; log.txt keeps the traceback."""
    from data.shard import write_shard

    write_shard(tmp_path / "d_train_000000.bin", [1023, 1, 2, 3] * 1500)  # 6,000 tokens: about 5 steps
    write_shard(tmp_path / "d_train_000001.bin", list(range(2000)) * 10)  # ids up to 1999 > vocabulary 1024
    write_shard(tmp_path / "d_val_000000.bin", [1023, 1] * 5000)
    code, run_dir = run(tmp_path, "--data.synthetic=false", f"--data.train_files={tmp_path}/d_train_*.bin",
                        f"--data.val_files={tmp_path}/d_val_*.bin", "--schedule.steps=12")
    out = capsys.readouterr()
    assert code == 2
    assert "d_train_000001.bin" in out.err and "error:" in out.err
    assert "Traceback" not in out.err + out.out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] >= 1 and "d_train_000001.bin" in summary["error"]
    log = (run_dir / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "failed during step" in log
