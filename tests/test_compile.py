"""The CPU proxy for "compiles once on CUDA": the speedrun config, shrunk to CPU size, compiled with
inductor on CPU (model.compile_cpu) for enough steps to pass through every window of the warm-up and
two validations, in both compile modes the GPU runs: the whole model (one process) and block by block
(the one-rank process group, which takes the path of 8 GPUs). No graph break, no eager fallback, no
graph compiled after the warm-up. What a CPU cannot show: FlexAttention's backward (CPU has none, so
the attention here is SDPA with a dense mask), bf16 autocast and the Triton kernels."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import schedule

REPO = Path(__file__).resolve().parents[1]
WINDOW, STEPS = 384, 6
SHRUNK = [
    "--config", str(REPO / "configs/speedrun_124m.toml"), "--data.synthetic=true",
    "--data.synthetic_train_tokens=200000", "--data.synthetic_val_tokens=16384", "--model.vocab_size=1024",
    "--model.eot_token=1023", "--model.width=64", "--model.heads=2", "--model.head_dim=32", "--model.depth=6",
    "--model.window_pattern=LSSLSL", "--model.no_attention_layers=[4]", "--model.seq_len=512",
    f"--model.window={WINDOW}", "--model.compile_cpu=true", "--model.loss_chunk=256", "--data.batch_tokens=1024",
    "--data.micro_batch_size=1", f"--schedule.steps={STEPS}", "--eval.every=3", "--eval.tokens=2048",
    "--eval.seq_len=1024", "--eval.batch_size=1", "--log.every=1", "--checkpoint.final=false",
]


def test_the_shrunk_run_passes_every_window_size_and_moves_its_lr():
    windows = {schedule.window_at(s, STEPS, WINDOW, True) for s in range(STEPS)}
    assert windows == {128, 256, 384}
    lrs = {schedule.lr_multiplier(s, STEPS, 0, 0.4, 0.1) for s in range(STEPS)}
    assert len(lrs) > 2


@pytest.mark.slow
@pytest.mark.parametrize("mode, flags", [
    ("the model", ["--model.fp8_head=false"]),
    # the FP8 head too (torch._scaled_mm runs on the CPU, slowly), and every distributed path
    ("each block", ["--distributed.one_rank_group=true"]),
])
def test_the_speedrun_step_compiles_once(tmp_path, mode, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(REPO / "train_gpt.py"), *SHRUNK, f"--log.dir={tmp_path}",
                          "--log.run_id=run", *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"compile: {mode}" in log
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert summary["graph_breaks"] == 0, "a graph break in the model (see TORCH_LOGS=graph_breaks)"
    assert summary["compile_fallbacks"] == 0 and "EAGER" not in log
    assert summary["graphs_compiled"] > 0 and summary["recompiles"] == 0, log
    assert "recompile:" not in log
