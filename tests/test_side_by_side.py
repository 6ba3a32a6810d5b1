"""scripts/gpu/side_by_side.py on a CPU machine, with a tiny fake record log written here (never the
record's code): extraction of the script, reading and patching its constants, the shards, both
commands, parsing both trainers' step lines, and the whole comparison with the fake record script
and our real trainer at toy size."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.gpu import side_by_side as sbs
from tests.test_train import SMOKE

REPO = Path(__file__).resolve().parents[1]

# A stand-in for a record's script: constants in a Hyperparameters class, shards globbed from its
# working directory, one speedrun line per step (step_avg from step 11 on), a last line after validation.
FAKE_SCRIPT = '''import sys
from pathlib import Path

class Hyperparameters:
    # data
    train_files = "data/fineweb10B/fineweb_train_*.bin" # input .bin to train on
    val_files = "data/fineweb10B/fineweb_val_*.bin"
    val_tokens = 1024 # validation tokens
    num_iterations = 1770 # number of iterations to run
    cooldown_frac = 0.4
    val_loss_every = 125 # every how many steps
    seq_len = 2*64 # tokens per GPU per step
    val_seq_len = 4*64
args = Hyperparameters()

train = sorted(Path.cwd().glob(args.train_files))
val = sorted(Path.cwd().glob(args.val_files))
assert train and val, "no shards"
assert args.val_tokens % args.val_seq_len == 0 and args.val_loss_every == 0
n = args.num_iterations
for step in range(1, n + 1):
    avg = "nan" if step <= 11 else f"{n / 10:.2f}"
    print(f"step:{step}/{n} train_time:{step * 3}ms step_avg:{avg}ms")
print(f"step:{n}/{n} val_loss:4.2000 train_time:{n * 3}ms step_avg:{n / 10:.2f}ms")
'''
FAKE_LOG = FAKE_SCRIPT + "=" * 100 + "\nRunning Python 3.12.0\n" + "=" * 100 + (
    "\nstep:0/1770 val_loss:10.8258 train_time:0ms step_avg:nanms\nstep:1/1770 train_time:24286ms step_avg:nanms\n")
TOY = ["--model.width=64", "--model.heads=2", "--model.depth=2", "--model.value_embeds=1", "--model.window_pattern=LS",
       "--model.seq_len=128", "--model.window=96", "--data.micro_batch_size=1", "--optim.muon.momentum_warmup_steps=4"]


def test_extracts_exactly_the_script_at_the_head_of_the_log():
    assert sbs.extract_script(FAKE_LOG) == FAKE_SCRIPT
    assert sbs.extract_script(FAKE_LOG.replace("\n", "\r\n")) == FAKE_SCRIPT.replace("\n", "\r\n")
    with pytest.raises(sbs.RecordError, match="no line of 100 '='"):
        sbs.extract_script(FAKE_SCRIPT)
    with pytest.raises(sbs.RecordError, match="not Python"):
        sbs.extract_script("step:1/10 train_time:3ms step_avg:nanms\n" + "=" * 100 + "\n")


def test_reads_the_constants_that_set_tokens_steps_and_validation():
    c = sbs.read_constants(FAKE_SCRIPT)
    assert (c.seq_len, c.val_seq_len, c.num_iterations, c.val_tokens) == (128, 256, 1770, 1024)
    renamed = FAKE_SCRIPT.replace("    seq_len = 2*64", "    train_seq_len = 3*64")  # later records' name
    assert sbs.read_constants(renamed).seq_len == 192
    with pytest.raises(sbs.RecordError, match="none of train_seq_len, seq_len"):
        sbs.read_constants(FAKE_SCRIPT.replace("    seq_len = 2*64", "    context = 2*64"))
    with pytest.raises(sbs.RecordError, match="not an integer constant expression"):
        sbs.read_constants(FAKE_SCRIPT.replace("val_seq_len = 4*64", "val_seq_len = int(os.environ['L'])"))


def test_patches_each_constant_exactly_once_or_fails_naming_it():
    patched, changes = sbs.patch_script(FAKE_SCRIPT, steps=30, val_tokens=256)
    assert [(c["constant"], c["was"], c["now"]) for c in changes] == [
        ("train_files", '"data/fineweb10B/fineweb_train_*.bin"', '"data/train_*.bin"'),
        ("val_files", '"data/fineweb10B/fineweb_val_*.bin"', '"data/val_*.bin"'),
        ("num_iterations", "1770", "30"), ("val_loss_every", "125", "0"), ("val_tokens", "1024", "256")]
    assert "    num_iterations = 30 # number of iterations to run\n" in patched  # comments stay
    assert "    val_loss_every = 0 # every how many steps\n" in patched
    assert "    cooldown_frac = 0.4\n" in patched and "    seq_len = 2*64 # tokens per GPU per step\n" in patched
    assert len(patched.splitlines()) == len(FAKE_SCRIPT.splitlines())  # nothing else changed
    with pytest.raises(sbs.RecordError, match="assigns `num_iterations = ...` 0 times"):
        sbs.patch_script(FAKE_SCRIPT.replace("num_iterations = 1770", "iterations = 1770"), 30, 256)
    twice = FAKE_SCRIPT.replace("args = Hyperparameters()", "args = Hyperparameters()\nval_loss_every = 5")
    with pytest.raises(sbs.RecordError, match="assigns `val_loss_every = ...` 2 times"):
        sbs.patch_script(twice, 30, 256)


def test_parses_the_last_finite_step_avg_of_both_trainers():
    record = ("step:0/1770 val_loss:10.8258 train_time:0ms step_avg:nanms\n"
              "step:11/1770 train_time:94ms step_avg:nanms\n"
              "step:1769/1770 train_time:175301ms step_avg:99.66ms\n"
              "step:1770/1770 train_time:175405ms step_avg:99.66ms\n"
              "step:1770/1770 val_loss:3.2774 train_time:175510ms step_avg:99.72ms\n"
              "peak memory allocated: 29898 MiB reserved: 44552 MiB\n")
    assert sbs.parse_step_avg(record) == {"step": 1770, "steps": 1770, "train_time_ms": 175510.0,
                                          "step_avg_ms": 99.72}
    ours = ("step:0/100 val_loss:10.8300 train_time:0ms step_avg:nan\n"
            "step:90/100 train_loss:5.1234 train_time:8100ms step_avg:101.25ms tok/s:485,000 mem:30,000MiB "
            "lr_mult:0.3\n"
            "step:100/100 train_loss:5.0001 val_loss:4.9876 train_time:9000ms step_avg:100.00ms tok/s:491,520 "
            "mem:31,000MiB lr_mult:0.1000\ncompleted: 100/100 steps, final val_loss 4.9876\n")
    assert sbs.parse_step_avg(ours) == {"step": 100, "steps": 100, "train_time_ms": 9000.0, "step_avg_ms": 100.0}
    assert sbs.parse_step_avg("step:5/100 train_time:50ms step_avg:nanms\n") is None
    assert sbs.parse_step_avg("") is None


def test_commands_run_the_record_under_torchrun_and_ours_with_its_tokens(tmp_path):
    assert sbs.record_command("py") == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                        sbs.SCRIPT_NAME]
    cmd = sbs.our_command("py", "cfg.toml", tmp_path, 49152, 100, 262144, 262144, ["--model.depth=2"])
    assert cmd[:4] == ["py", str(REPO / "train_gpt.py"), "--config", "cfg.toml"]
    for flag in ("--data.batch_tokens=49152", "--schedule.steps=100", f"--data.train_files={tmp_path}/data/train_*.bin",
                 f"--data.val_files={tmp_path}/data/val_*.bin", "--eval.every=0", "--eval.tokens=262144",
                 "--eval.seq_len=262144", "--checkpoint.final=false"):
        assert flag in cmd
    assert cmd[-1] == "--model.depth=2"  # the user's overrides come last and win


def test_measured_keeps_a_partial_figure_apart_from_the_figure():
    from scripts.gpu.running import Finished

    full = "step:20/20 train_time:60ms step_avg:3.00ms\n"
    assert sbs.measured("ours", Finished(0, False, 1.0), full)["step_avg_ms"] == 3.0
    partial = sbs.measured("ours", Finished(None, True, 9.0), "step:15/20 train_time:45ms step_avg:3.00ms\n")
    assert partial["step_avg_ms"] is None and partial["partial_step_avg_ms"] == 3.0 and "killed" in partial["error"]
    short = sbs.measured("record", Finished(0, False, 1.0), "step:15/20 train_time:45ms step_avg:3.00ms\n")
    assert short["step_avg_ms"] is None and "no final step line" in short["error"]
    assert "code 1" in sbs.measured("record", Finished(1, False, 1.0), full)["error"]


def test_without_cuda_it_exits_with_the_gpu_checks_code(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(FAKE_LOG)
    done = subprocess.run([sys.executable, "-m", "scripts.gpu.side_by_side", "--record-log", str(log)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 77 and "no CUDA device" in done.stderr
    with pytest.raises(SystemExit):
        sbs.main(["--record-log", str(log), "--keep-dir", str(REPO / "tmp_record")])  # never inside the repository
    with pytest.raises(SystemExit):
        sbs.main(["--record-log", str(log), "--steps=20"])


@pytest.fixture
def keep_sigterm():
    """main() turns SIGTERM into SystemExit (to stop its runs); leave pytest's own handler as it was."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def test_side_by_side_with_a_fake_record_and_our_trainer(tmp_path, monkeypatch, keep_sigterm):
    """The whole comparison on CPU: the fake record's patched script finds the shards from its working
    directory and runs the patched number of steps; ours trains the same steps on the same files with
    the record's tokens per step; both figures and the ratio land in the JSON."""
    log, out, keep = tmp_path / "log.txt", tmp_path / "sbs.json", tmp_path / "work"
    log.write_text(FAKE_LOG)
    monkeypatch.setattr(sbs, "cuda_available", lambda: True)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = sbs.main(["--record-log", str(log), "--config", SMOKE, "--steps=22", "--timeout-s=120", f"--out={out}",
                     f"--keep-dir={keep}", *TOY])
    result = json.loads(out.read_text())
    assert code == 0, (result["record"].get("error"), result["ours"].get("error"), result["ours"]["output_tail"])
    assert result["record"]["step_avg_ms"] == 2.2  # the fake prints num_iterations / 10: the patch took effect
    assert result["record"]["step"] == result["ours"]["step"] == 22
    assert result["ours"]["step_avg_ms"] > 0 and math.isclose(result["ratio"], result["ours"]["step_avg_ms"] / 2.2)
    assert result["tokens_per_gpu"] == 128 and result["shards"]["source"] == "synthetic"
    assert "--data.batch_tokens=128" in result["commands"]["ours"]
    summary = json.loads((keep / "runs" / "ours" / "summary.json").read_text())
    assert summary["tokens"] == 22 * 128 and summary["data"]["train_files"] == [str(keep / "data" / "train_000000.bin")]
    assert (keep / "data" / "train_000000.bin").resolve() == Path(result["shards"]["train_files"][0]).resolve()
    assert "data/fineweb10B" not in (keep / sbs.SCRIPT_NAME).read_text()
    assert FAKE_SCRIPT not in out.read_text()  # the JSON holds the constants' values, not the code
