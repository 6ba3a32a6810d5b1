"""A run on your own data says what it reads and refuses what it cannot use (issue 19). Each case
fails on the trainer before that issue: files named beside synthetic data were silently ignored,
a wrong separator token was used without a word, the summary did not identify the run, evaluation
always read every token, and multi-process runs printed torch's FutureWarnings."""

import json
import os
import subprocess
import sys

import pytest

from common.exit_codes import EXIT_CONFIG
from data.shard import write_shard
from tests.test_train import REPO, SMOKE, TINY, run
from training.config import load_config
from training.run_dir import read_metrics
from training.schedule import eval_batch_size, eval_due, eval_tokens

DOCS = ([1023] + list(range(100))) * 200  # every document starts with the separator 1023


def shards(tmp_path, train, val, prefix="d"):
    write_shard(tmp_path / f"{prefix}_train_000001.bin", train)
    write_shard(tmp_path / f"{prefix}_val_000000.bin", val)
    return [f"--data.train_files={tmp_path}/{prefix}_train_*.bin", f"--data.val_files={tmp_path}/{prefix}_val_*.bin"]


@pytest.mark.parametrize("extra, train, val, message", [
    # 1. files named on top of a synthetic config: refused, naming the conflicting keys (no shards generated)
    ((), DOCS, DOCS, "data.train_files = '{tmp}/d_train_*.bin' names data files, but data.synthetic = true"),
    # 2. the separator of the data is not the config's
    (("--data.synthetic=false",), [5, 6, 7] * 3000, [5, 7] * 3000,
     "model.eot_token = 1023, but {tmp}/d_train_000001.bin and {tmp}/d_val_000000.bin both start with token 5"),
    (("--data.synthetic=false",), [6, 5, 7] * 3000, [5, 6] * 3000, "model.eot_token = 1023 never occurs in the first"),
])
def test_data_that_does_not_fit_the_config_is_refused(tmp_path, capsys, extra, train, val, message):
    synthetic_dir = tmp_path / "synthetic"
    code, run_dir = run(tmp_path, *shards(tmp_path, train, val), *extra, f"--data.synthetic_dir={synthetic_dir}")
    assert code == EXIT_CONFIG
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not run_dir.exists() and not synthetic_dir.exists()


def test_the_separator_must_also_fit_a_bigger_vocabulary(tmp_path, capsys):
    """Raising model.vocab_size on the smoke config keeps eot_token = 1023: with GPT-2 style shards
    (separator 50256) the run is refused, and naming the right separator makes it run."""
    data = ([50256] + list(range(2000, 2100))) * 200
    args = [*shards(tmp_path, data, data), "--data.synthetic=false", "--model.vocab_size=50257", "--schedule.steps=2"]
    code, _ = run(tmp_path, *args)
    assert code == EXIT_CONFIG and "set --model.eot_token=50256" in capsys.readouterr().err
    code, run_dir = run(tmp_path, *args, "--model.eot_token=50256", run_id="fixed")
    assert code == 0


def test_a_real_data_run_says_what_it_reads_and_the_summary_identifies_it(tmp_path, capsys):
    args = [*shards(tmp_path, DOCS * 3, DOCS), "--data.synthetic=false", "--schedule.steps=4", "--optim.name=adamw"]
    code, run_dir = run(tmp_path, *args)
    assert code == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("data: "))
    assert "1 train file(s) (d_train_000001.bin) with 60,600 tokens" in line
    assert "1 validation file(s) with 20,200 tokens" in line and "first 4,096" in line
    assert "4 x 1,024 tokens = 0.0676 epoch(s)" in line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["synthetic"] is False and summary["data"]["train_tokens"] == 60600
    assert summary["data"]["train_files"] == [str(tmp_path / "d_train_000001.bin")]
    assert summary["config_file"] == SMOKE and "--optim.name=adamw" in summary["overrides"]
    assert summary["optimizer"] == "adamw"


@pytest.mark.parametrize("run_id", ["nan", "1e3", "true"])
def test_run_ids_are_strings_whatever_they_look_like(tmp_path, run_id):
    """4. an override is read as the type of its field (log.run_id is a string)."""
    code, run_dir = run(tmp_path, "--schedule.steps=1", "--eval.every=0", run_id=run_id)
    assert code == 0 and (tmp_path / run_id / "summary.json").is_file()


# ---------------------------------------------------------------------------------------------
# 5. evaluation: a sensible default batch, a cheaper interval evaluation, step 0 optional


def test_evaluation_defaults_batch_rows_and_reads_fewer_tokens_between(tmp_path):
    cfg = load_config(SMOKE)
    assert cfg.eval.batch_size == 0 and eval_batch_size(cfg, 1) == 32  # 32 rows of 256: 8,192 tokens per forward
    assert eval_batch_size(load_config(SMOKE, ["--eval.batch_size=3"]), 1) == 3
    assert eval_tokens(cfg, 50) == 8192 and eval_tokens(cfg, 200) == 32768  # the final one reads all of eval.tokens
    late = load_config(SMOKE, ["--eval.every=50", "--eval.every_late=5", "--eval.late_frac=0.1"])
    assert [s for s in range(201) if eval_due(late, s)] == [0, 50, 100, 150, 180, 185, 190, 195, 200]
    assert not eval_due(load_config(SMOKE, ["--eval.at_start=false"]), 0)


def test_interval_validations_read_interval_tokens_and_step_0_is_optional(tmp_path, monkeypatch):
    import training.trainer as trainer_module

    seen = []
    real = trainer_module.val_batches
    monkeypatch.setattr(trainer_module, "val_batches", lambda *a, **k: seen.append(k["tokens"]) or real(*a, **k))
    code, run_dir = run(tmp_path, "--eval.interval_tokens=1024", "--eval.at_start=false", "--eval.every=4")
    assert code == 0
    assert seen == [1024, 1024, 4096]  # steps 4 and 8: the interval tokens; step 12: all of eval.tokens
    assert [r["step"] for r in read_metrics(run_dir) if "val_loss" in r] == [4, 8, 12]


def test_the_summary_reports_steps_and_time_to_the_target(tmp_path):
    code, run_dir = run(tmp_path, "--eval.target=6.0", "--eval.every=2")
    summary = json.loads((run_dir / "summary.json").read_text())
    vals = [(r["step"], r["val_loss"], r["train_time_ms"]) for r in read_metrics(run_dir) if "val_loss" in r]
    first = next((s, t) for s, v, t in vals if v <= 6.0)
    assert code == 0 and (summary["steps_to_target"], summary["time_to_target_ms"]) == first
    assert summary["eval_target"] == 6.0 and first[0] < 12
    assert f"<= eval.target 6 at step {first[0]}" in (run_dir / "log.txt").read_text()


# ---------------------------------------------------------------------------------------------
# 6. multi-process logs show only what matters


def test_no_future_warnings_from_the_collectives(tmp_path):
    """Two gloo processes: the reduce-scatter and all-gather use torch's current names."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train_gpt.py"), "--config", SMOKE, *TINY, "--schedule.steps=2", f"--log.dir={tmp_path}",
           "--eval.every=0", "--checkpoint.every=2"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FutureWarning" not in out.stderr + out.stdout


def test_each_shard_is_resolved_once_and_its_header_read_once(tmp_path, monkeypatch):
    """The run resolves the file patterns once and reads every shard's header once (at start-up, where the
    shards are checked); the loader and every validation reuse those counts and the opened shards."""
    import glob as glob_module

    from data import loader, shard
    from training import run_data

    headers, globs = {}, []
    real_header, real_glob = shard.read_header, glob_module.glob

    def counted(path):
        headers[str(path)] = headers.get(str(path), 0) + 1
        return real_header(path)

    def counted_glob(pattern, *args, **kwargs):
        globs.append(pattern)
        return real_glob(pattern, *args, **kwargs)

    for module in (shard, loader, run_data):
        monkeypatch.setattr(module, "read_header", counted)
    monkeypatch.setattr(loader.glob, "glob", counted_glob)
    code, run_dir = run(tmp_path, "--schedule.steps=6", "--eval.every=2")
    assert code == 0 and len(read_metrics(run_dir)) >= 4  # several validations
    data = [p for p in headers if "synthetic_" in p]
    assert data and all(headers[p] == 1 for p in data), headers
    assert len([g for g in globs if "synthetic_" in g]) == 2, globs  # train and validation, once each
