"""The fault matrix: what a run does off the happy path. Each case names the issue item it covers
(issue 12, "runs never lie and never lose work"); the README's "When things go wrong" lists what the
user sees in each. Multi-process cases (Scion light on 2 ranks) are in tests/test_distributed.py,
the sweep's retries in tests/test_sweep.py, records refusing unfinished runs in tests/test_records.py."""

import json
import os
import stat

import pytest
import torch

import train_gpt
from common.atomic import TMP_SUFFIX
from common.errors import ConfigError
from common.exit_codes import EXIT_CONFIG, EXIT_DIVERGED, EXIT_FAILED, EXIT_OK
from data.shard import write_shard
from model import GPT
from tests.test_train import REPO, SMOKE, TINY, run
from training.config import load_config, validate
from training.run_dir import read_metrics
from training.trainer import Trainer


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))


def snapshot(run_dir):
    """Every file of a run directory with its bytes (to prove that nothing changed)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# 1. an unexpected error is recorded as a failure, never as success


def test_unexpected_error_ends_with_status_failed(tmp_path, monkeypatch, capsys):
    original = Trainer.step

    def disk_full(self, step):
        if step == 2:  # the third step
            raise OSError(28, "No space left on device")
        return original(self, step)

    monkeypatch.setattr(Trainer, "step", disk_full)
    code, run_dir = run(tmp_path)
    assert code == EXIT_FAILED
    summary = summary_of(run_dir)
    assert summary["status"] == "failed" and summary["steps"] == 2
    assert "No space left on device" in summary["error"]
    log = (run_dir / "log.txt").read_text()
    assert "failed during step 3" in log and "Traceback (most recent call last)" in log
    assert "summary.json says failed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 2. a non-finite state is never checkpointed; the newest checkpoint is the last good one


def test_nan_between_log_steps_is_caught_before_the_checkpoint(tmp_path, monkeypatch):
    """The loss turns NaN at step 3; log lines every 5 steps, checkpoints every 2 with keep = 1.
    Before: the step-4 checkpoint held the diverged state and pruned step 2. Now: the run stops at
    the step-4 boundary naming step 3, and step 2 is kept."""
    original = Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, step: original(self, step) * (float("nan") if step >= 2 else 1))
    code, run_dir = run(tmp_path, "--log.every=5", "--checkpoint.every=2", "--checkpoint.keep=1", "--eval.every=0")
    assert code == EXIT_DIVERGED
    assert checkpoints(run_dir) == ["step_000002.pt"]
    summary = summary_of(run_dir)
    assert summary["status"] == "diverged" and "at step 3" in summary["error"] and summary["steps"] == 4
    assert "Last good checkpoint: " in (run_dir / "log.txt").read_text()


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    """The update of step 4 writes an inf into the head: step 4's loss (computed before its update)
    is finite, but the step-4 checkpoint is refused."""
    original = Trainer.optimizer_step

    def poisoned(self, step):
        original(self, step)
        if step == 3:
            with torch.no_grad():
                self.model.head.weight[0, 0] = float("inf")

    monkeypatch.setattr(Trainer, "optimizer_step", poisoned)
    code, run_dir = run(tmp_path, "--log.every=5", "--checkpoint.every=2", "--eval.every=0")
    assert code == EXIT_DIVERGED
    assert checkpoints(run_dir) == ["step_000002.pt"]
    assert "non-finite weights after step 4" in summary_of(run_dir)["error"]


# ---------------------------------------------------------------------------------------------
# 3.-5. resuming: a finished run, a resume that cannot work, "latest", changed settings


def test_resuming_a_completed_run_changes_nothing(tmp_path, capsys):
    code, run_dir = run(tmp_path)
    assert code == 0
    before = snapshot(run_dir)
    for resume in ("latest", str(run_dir), str(run_dir / "checkpoints" / "step_000012.pt")):
        code, _ = run(tmp_path, f"--checkpoint.resume={resume}")
        assert code == EXIT_OK
        assert "already completed 12 steps" in capsys.readouterr().out
        assert snapshot(run_dir) == before


@pytest.mark.parametrize("override, named", [
    ("--model.width=128", "model.width: 64 -> 128"),  # model shape
    ("--optim.name=adamw", "optim.name: 'muon' -> 'adamw'"),  # optimizer
    ("--optim.lr=0.01", "optim.lr: 0.05 -> 0.01"),  # learning rate: refused, never silently ignored
    ("--optim.muon.momentum=0.9", "optim.muon.momentum: 0.95 -> 0.9"),
    ("--schedule.steps=20", "schedule.steps: 12 -> 20"),
])
def test_a_resume_with_a_different_training_config_is_refused_and_writes_nothing(tmp_path, capsys, override, named):
    code, run_dir = run(tmp_path, "--schedule.steps=12")
    (run_dir / "summary.json").unlink()  # as if it had stopped: only its checkpoints are left
    before = snapshot(run_dir)
    code, _ = run(tmp_path, "--checkpoint.resume=latest", override)
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert named in err and "start a new run" in err
    assert snapshot(run_dir) == before  # config.toml and log.txt untouched


def test_a_resume_may_change_where_and_how_often_it_logs(tmp_path):
    code, run_dir = run(tmp_path, "--schedule.steps=12")
    (run_dir / "summary.json").unlink()
    code, _ = run(tmp_path, f"--checkpoint.resume={run_dir / 'checkpoints' / 'step_000008.pt'}", "--eval.every=3",
                  "--log.every=2", "--checkpoint.every=0")
    assert code == 0 and summary_of(run_dir)["status"] == "completed"


def test_latest_without_a_run_id_means_the_newest_run_of_the_same_config(tmp_path, capsys):
    base = ["--config", SMOKE, *TINY, f"--log.dir={tmp_path}", "--schedule.steps=4"]
    assert train_gpt.main([*base, "--log.run_id=mine"]) == 0
    (tmp_path / "mine" / "summary.json").unlink()
    other = str(REPO / "configs/smoke_adamw.toml")  # a later run of another config (name "smoke_adamw")
    assert train_gpt.main(["--config", other, *TINY, f"--log.dir={tmp_path}", "--log.run_id=other",
                           "--schedule.steps=4"]) == 0
    capsys.readouterr()
    assert train_gpt.main([*base, "--checkpoint.resume=latest", "--schedule.steps=4"]) == 0
    assert f"continuing {tmp_path / 'mine'}, the newest run of config 'smoke'" in capsys.readouterr().out
    code = train_gpt.main([*base, "--checkpoint.resume=latest", "--log.dir", str(tmp_path / "empty")])
    assert code == EXIT_CONFIG


# ---------------------------------------------------------------------------------------------
# 6. data problems surface before the first step (exit 2, the file and the numbers named)


def shards(tmp_path, train, val):
    write_shard(tmp_path / "d_train_000001.bin", train)
    write_shard(tmp_path / "d_val_000000.bin", val)
    return ["--data.synthetic=false", f"--data.train_files={tmp_path}/d_train_*.bin",
            f"--data.val_files={tmp_path}/d_val_*.bin"]


DOCS = ([1023] + list(range(100))) * 200  # 20,200 tokens, every document starts with the separator 1023


@pytest.mark.parametrize("train, val, message", [
    (DOCS, DOCS[:3000], "hold 3,000 tokens, but eval.tokens = 4,096 needs 4,097"),  # val shorter than eval.tokens
    ([], DOCS, "d_train_000001.bin: training shard with 0 tokens"),
    (DOCS[:100], DOCS, "no training shard holds one row of model.seq_len + 1 = 129 tokens"),
    (DOCS, DOCS[:3000] + [2000] + DOCS[:2000], "d_val_000000.bin: token id 2000 at position 3000 is >= model.vocab_size"),
    (DOCS, DOCS[:3000] + [2000] + DOCS[:2000], "set --model.vocab_size=<the tokenizer's vocabulary size> (at least 2001"),
    (DOCS[:5000] + [1500] + DOCS, DOCS, "d_train_000001.bin: token id 1500 at position 5000"),
])
def test_data_problems_fail_before_the_first_step(tmp_path, capsys, train, val, message):
    code, run_dir = run(tmp_path, *shards(tmp_path, train, val))
    assert code == EXIT_CONFIG
    assert message in capsys.readouterr().err
    assert not run_dir.exists()  # nothing written, nothing trained


# ---------------------------------------------------------------------------------------------
# 7. a corrupt checkpoint


def test_corrupt_checkpoint_is_named_and_latest_falls_back_to_the_previous_one(tmp_path, capsys):
    code, run_dir = run(tmp_path, "--schedule.steps=12", "--checkpoint.every=4")
    (run_dir / "summary.json").unlink()
    newest = run_dir / "checkpoints" / "step_000012.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    code, _ = run(tmp_path, f"--checkpoint.resume={newest}")
    assert code == EXIT_CONFIG
    assert f"checkpoint {newest} cannot be read" in capsys.readouterr().err
    code, _ = run(tmp_path, "--checkpoint.resume=latest")
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert f"warning: checkpoint {newest} cannot be read" in out and "step_000008.pt at step 8" in out
    assert summary_of(run_dir)["status"] == "completed"


# ---------------------------------------------------------------------------------------------
# 9. smaller holes


@pytest.mark.parametrize("override, message", [
    ("--optim.lr=inf", "optim.lr must be a finite number"),
    ("--optim.lr=nan", "optim.lr must be a finite number"),
    ("--optim.lr=-0.1", "optim.lr must be positive"),
    ("--optim.muon.embed.lr=inf", "optim.muon.embed.lr must be a finite number"),
    ("--schedule.cooldown_frac=nan", "schedule.cooldown_frac must be a finite number"),
    ("--log.run_id=../escape", "log.run_id = '../escape' must be a plain folder name"),
    ("--log.run_id=a/b", "must be a plain folder name"),
    ("--log.run_id=.hidden", "must be a plain folder name"),
])
def test_impossible_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(load_config(SMOKE, [override]))


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        code, run_dir = run(tmp_path, "--schedule.steps=4")
    finally:
        os.umask(old)
    assert code == 0
    for name in ("summary.json", "config.toml", "checkpoints/step_000004.pt"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name


def test_temporaries_of_a_killed_write_are_removed_on_the_next_start(tmp_path, capsys):
    code, run_dir = run(tmp_path, "--schedule.steps=12")
    (run_dir / "summary.json").unlink()
    stale = run_dir / "checkpoints" / f".step_000016.pt.1234abcd{TMP_SUFFIX}"
    stale.write_bytes(b"half a checkpoint")
    code, _ = run(tmp_path, "--checkpoint.resume=latest")
    assert code == 0 and not stale.exists()
    assert f"removed {stale.name}" in capsys.readouterr().out


def test_each_step_has_one_metrics_row_after_a_fresh_restart(tmp_path):
    """resume = latest before the first checkpoint (a torchrun restart early in a run) starts over in
    the same directory: the step-0 row it wrote before is not kept twice."""
    code, run_dir = run(tmp_path, "--schedule.steps=3", "--checkpoint.every=0", "--checkpoint.final=false")
    (run_dir / "summary.json").unlink()
    code, _ = run(tmp_path, "--schedule.steps=3", "--checkpoint.every=0", "--checkpoint.resume=latest")
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert code == 0 and steps == sorted(set(steps)) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Compilation (issue 13): the warm-up is undone exactly; the watch sees fallbacks


def test_a_warm_up_before_the_clock_changes_no_result(tmp_path):
    """model.compile_warmup_steps steps and a validation batch run, then everything is restored:
    the run ends with the weights and losses of a run without them."""
    assert run(tmp_path, "--model.compile_warmup_steps=3", run_id="warm")[0] == 0
    assert run(tmp_path, "--model.compile_warmup_steps=0", run_id="cold")[0] == 0
    warm, cold = read_metrics(tmp_path / "warm"), read_metrics(tmp_path / "cold")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_time_ms"} for r in rows]  # noqa: E731
    assert strip(warm) == strip(cold)
    a = torch.load(tmp_path / "warm/checkpoints/step_000012.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cold/checkpoints/step_000012.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "warm-up: 3 step(s)" in (tmp_path / "warm/log.txt").read_text()
    assert summary_of(tmp_path / "warm")["compile_time_s"] > 0


def test_the_compile_watch_counts_graphs_and_sees_an_eager_fallback():
    import torch._dynamo

    from training import compilation

    torch._dynamo.reset()
    limit = compilation.configure(3)
    assert limit >= 7
    watch = compilation.CompileWatch().start()
    f = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    for n in range(1, limit + 3):  # one new shape per call: one graph each, until the limit is hit
        f(torch.ones(n))
    watch.stop()
    assert watch.graphs == limit and watch.fallbacks and "recompile_limit" in watch.fallbacks[0]
    torch._dynamo.reset()


def test_the_warm_up_runs_the_validation_call_that_validation_makes(tmp_path, monkeypatch):
    """The warm-up's validation batch goes through the model exactly as validation calls it (eval mode, no
    gradients, the same shapes, accuracy=True: another head path), so the first validation compiles
    nothing new on CUDA."""
    calls = []
    original = torch.nn.Module.__call__

    def record(module, *args, **kwargs):
        if isinstance(module, GPT) and not module.training:
            inputs, targets, window = args[:3]
            calls.append((tuple(inputs.shape), tuple(targets.shape), torch.is_grad_enabled(),
                          bool(args[3] if len(args) > 3 else kwargs.get("accuracy", False))))
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", record)
    assert run(tmp_path, "--model.compile_warmup_steps=1", "--schedule.steps=2", "--eval.every=0",
               "--checkpoint.every=0")[0] == 0
    warm_up, validations = calls[0], set(calls[1:])
    assert validations == {warm_up}, (warm_up, validations)


def test_the_compile_watch_counts_graph_breaks():
    import torch._dynamo

    from training import compilation

    torch._dynamo.reset()
    watch = compilation.CompileWatch().start()

    def f(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    torch.compile(f, backend="eager")(torch.ones(3))
    watch.stop()
    assert watch.graph_breaks >= 1
    torch._dynamo.reset()
