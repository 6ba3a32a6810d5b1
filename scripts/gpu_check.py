"""One command for the GPU figures: the Newton–Schulz kernels, the 124M step with its breakdown (whole
model, and block by block in a one-rank process group: the code 8 GPUs run), a short training run on
real text, the GPU tests, and (given the record's log) the record's script side by side.

    bash scripts/gpu_first_run.sh OUT                           # the prepared run on a borrowed GPU (~9 min)
    python3 -m scripts.gpu_check                                # default stages, about 9 minutes on one H100/H200
    python3 -m scripts.gpu_check --stages ns,step               # a subset (always run in the order below)
    python3 -m scripts.gpu_check --stages record --record-log PATH   # the side by side alone (about 5 minutes)
    python3 -m scripts.gpu_check --dry-run                      # the plan: stages, budgets, commands (any machine)
    python3 -m scripts.gpu_check --time-limit-s 540 --out-dir DIR --archive OUT/gpu_check.tar.gz

Stages, in this order (the measurements first), each a subprocess with its own time budget (seconds,
`--budget name=s`):

    ns          45  scripts/bench_newton_schulz.py: plain torch vs Triton at 48x768x768, 12x768x3072, 1x4096x4096
    step       150  the config's step at 48x1024 tokens on this one GPU, the whole model compiled as one process
                    runs it (scripts/bench_step.py's timing: mean step, tokens/s, MFU, peak memory), its
                    breakdown (scripts/bench_comm.py's CUDA-event phases: forward+backward, optimizer,
                    communication waits), graphs compiled while timed, and one validation of the speedrun's
                    10,485,760 tokens (random shards): its peak memory says whether it fits on an 80 GB GPU
    step_group 120  the same step in a one-rank process group (distributed.one_rank_group): per-block
                    compilation, gradient hooks and buckets, reduce-scatter, sharded Muon and its bf16
                    all-gather, the path of 8 GPUs with a world of one
    train      100  train_gpt.py for `--train-steps` steps at 48x1024 tokens: on the character-level
                    Shakespeare shards when data/shakespeare_char/ holds them (real text; they travel with the
                    working tree), else on the config's FineWeb shards if they exist, else on synthetic
                    Markov-chain shards; checks that the loss falls, that the run completed, and that nothing
                    fell back to eager (summary.json's `compile_fallbacks`, `graph_breaks`, `recompiles`; a
                    missing key is "unknown", not 0; and torch's "hit config.recompile_limit" warning)
    tests      100  `pytest -m gpu`: Triton kernels in bf16, FlexAttention vs dense, the fused AdamW, the
                    compiled block masks (whatever carries the `gpu` marker; a matrix cut to what matters)
    record     330  scripts/side_by_side.py: the record's own script (from `--record-log`) and ours, same GPU,
                    same shards, same tokens per GPU per step, same steps: both ms/step and the ratio; skipped
                    without `--record-log`: a second command of its own (scripts/gpu_first_run.sh OUT record)

The default stages' budgets add up to 515 s, for one command of at most 9 minutes on a borrowed GPU
(10 minutes per command, 15 minutes in all with the machine's start); `--time-limit-s` clips every budget
to the time left and skips a stage that would start with under a minute. The budgets are estimates for
cold caches (compilation dominates them), to be confirmed by the first run. Each stage writes its JSON
as soon as it ends, so a run killed from outside keeps what it measured (on SIGTERM the running
stage's processes are killed too):

    <out-dir>/<stage>.json          status, figures, table rows, the raw output JSON, the command, the environment
    <out-dir>/<stage>.log.txt       the stage's output
    <out-dir>/check.json            this invocation: environment, settings, every stage
    <out-dir>/table.txt             the final table
    --archive PATH                  all of <out-dir> as one .tar.gz, rewritten after every stage (a borrowed
                                    machine returns a few files only)

The default out-dir is records/gpu/<YYYY-MM-DD>_<device>/. An existing file is never overwritten: a
second run the same day writes `ns-2.json`, `check-2.json`, ... The table at the end shows each figure
with its target (targets are benchmarks: a missed one is reported, it does not fail the check). Exit
code: 0 when every selected stage ran and passed its checks (a skipped stage is fine), 1 otherwise, 77
at once on a machine without CUDA (nothing is written).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.atomic import atomic_write_json  # noqa: E402

EXIT_FAILED = 1
EXIT_NO_GPU = 77  # the automake/meson convention for "skipped": nothing to measure here
TOKENS_PER_GPU = 48 * 1024  # the record's tokens per GPU per step (2025-01-26: seq_len = 48*1024)
VAL_TOKENS = 10_485_760  # the speedrun's validation: the first 10,485,760 tokens of the val shard
GPU_80GB_MIB = 81_559 - 2_048  # an H100 80GB's 81,559 MiB less room for the CUDA context and fragmentation
SHAKESPEARE_CHAR = "data/shakespeare_char"  # python3 -m data.shakespeare writes it (real text, a few MB)
SHAKESPEARE_EVAL_TOKENS = 262_144  # one validation batch of the speedrun config (eval.seq_len), within the 488k of val
LOSS_DROP = 0.5  # nats: the short run's last logged train loss must be this far below its first
MIN_STAGE_S = 60  # under --time-limit-s, a stage is not started with less than this left
NS_SHAPES = "48x768x768,12x768x3072,1x4096x4096"
NS_TARGETS = {"12x768x3072": 1.3, "1x4096x4096": 1.5}  # Triton speed-up over plain torch bf16
OPTIMIZER_SHARE_TARGET = 0.05
FALLBACK_WARNING = re.compile(r"hit config\.(recompile_limit|cache_size_limit)")
RECOMPILE_LOG = "Recompiling function"  # a TORCH_LOGS=recompiles line


def no_gpu_message(script: str) -> str:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return (f"{script}: no CUDA device (torch {torch.__version__}, {build}); this script measures GPU figures "
            f"only and exits with code {EXIT_NO_GPU}. On this machine run the CPU tests: python -m pytest -q")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# settings and stages


@dataclass(frozen=True)
class Settings:
    config: str = "configs/speedrun_124m.toml"
    overrides: tuple = ()  # dotted overrides for every run of our trainer (step, train, record)
    tokens_per_gpu: int = TOKENS_PER_GPU
    train_steps: int = 100
    record_steps: int = 100
    step_warmup: int = 10
    step_steps: int = 20
    record_log: str | None = None
    train_data: tuple | None = None  # the train stage's data overrides; None: Shakespeare, FineWeb or synthetic
    budgets: dict = field(default_factory=dict)  # stage name -> seconds, over the defaults
    time_limit_s: float | None = None
    python: str = sys.executable


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: int
    about: str
    command: Callable  # (settings, scratch folder, budget_s) -> argv
    read: Callable  # (settings, scratch folder, output text) -> {"figures", "rows", "problems", "raw"}
    skip: Callable = lambda settings: None  # a reason to skip, or None
    env: dict = field(default_factory=dict)


def row(figure: str, value: str, target: str = "", met: bool | None = None) -> dict:
    """One line of the table; `met` None: no target, or it could not be judged."""
    return {"figure": figure, "value": value, "target": target,
            "verdict": "" if met is None else ("met" if met else "missed")}


def read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"the stage wrote no {path.name}")
    return json.loads(path.read_text())


# tests -----------------------------------------------------------------------------------------


def tests_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    return [settings.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs",
            "--continue-on-collection-errors", f"--junitxml={scratch / 'tests.xml'}", "tests"]


def junit_counts(path: Path) -> dict:
    """Passed / failed / errors / skipped and the failing tests' ids from a pytest JUnit XML file."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": []}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            counts["failed" if "failure" in kinds else "errors"] += 1
            counts["failing"].append(name)
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def tests_read(settings: Settings, scratch: Path, output: str) -> dict:
    path = scratch / "tests.xml"
    if not path.exists():
        raise FileNotFoundError("pytest wrote no JUnit XML (did it start?)")
    c = junit_counts(path)
    problems = []
    if c["failed"] + c["errors"]:
        problems.append(f"{c['failed']} failed, {c['errors']} errors: {', '.join(c['failing'])}")
    if c["passed"] + c["failed"] + c["errors"] + c["skipped"] == 0:
        problems.append("no test carries the gpu marker")
    rows = [row("gpu tests passed / failed / errors / skipped",
                f"{c['passed']} / {c['failed']} / {c['errors']} / {c['skipped']}", "all pass",
                c["failed"] + c["errors"] == 0)]
    rows += [row("  failing", name) for name in c["failing"]]
    return {"figures": c, "rows": rows, "problems": problems, "raw": None}


# Newton–Schulz ---------------------------------------------------------------------------------


def ns_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    return [settings.python, "scripts/bench_newton_schulz.py", "--shapes", NS_SHAPES,
            "--variants", "torch,torch_baddbmm,triton", "--out", str(scratch / "ns.json")]


def ns_read(settings: Settings, scratch: Path, output: str) -> dict:
    raw = read_json(scratch / "ns.json")
    figures, rows, problems = {}, [], []
    for r in raw["rows"]:
        shape = "x".join(map(str, r["shape"]))
        speedup, target = r.get("speedup_triton_vs_torch"), NS_TARGETS.get(shape)
        figures[shape] = {k: r.get(k) for k in ("torch_ms", "torch_baddbmm_ms", "triton_ms", "speedup_triton_vs_torch",
                                               "triton_max_abs_diff_vs_torch")}
        if speedup is None:
            errors = [f"{shape}: {k} {v}" for k, v in r.items() if k.endswith("_error")]
            problems += errors or [f"{shape}: no Triton time"]
            rows.append(row(f"Newton-Schulz {shape}: torch / Triton", "failed", f">= {target}x" if target else ""))
            continue
        rows.append(row(f"Newton-Schulz {shape}: torch / Triton ({raw.get('dtype')})",
                        f"{r['torch_ms']:.3f} / {r['triton_ms']:.3f} ms = {speedup:.2f}x",
                        f">= {target}x" if target else "", speedup >= target if target else None))
    return {"figures": figures, "rows": rows, "problems": problems, "raw": raw}


# step ------------------------------------------------------------------------------------------


def step_command(settings: Settings, scratch: Path, budget_s: float, group: bool = False) -> list[str]:
    extra = ["--distributed.one_rank_group=true", "--no-validate"] if group else [f"--eval.tokens={VAL_TOKENS}"]
    return [settings.python, "scripts/gpu_check.py", "--worker", "step", "--worker-out", str(scratch / "step.json"),
            "--config", settings.config, f"--warmup={settings.step_warmup}", f"--steps={settings.step_steps}",
            f"--data.batch_tokens={settings.tokens_per_gpu}", *extra, *settings.overrides]


def step_group_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    return step_command(settings, scratch, budget_s, group=True)


def step_read(settings: Settings, scratch: Path, output: str) -> dict:
    raw = read_json(scratch / "step.json")
    parts = raw["breakdown"]
    share = parts["optimizer_fraction"]
    mfu = f", MFU {100 * raw['mfu']:.1f}%" if raw.get("mfu") is not None else ""
    rows = [
        row(f"step, {raw['tokens_per_step']:,} tokens (mean / median)",
            f"{raw['step_ms_mean']:.2f} / {raw['step_ms_median']:.2f} ms, {raw['tokens_per_s']:,.0f} tok/s{mfu}"),
        row("  forward+backward / optimizer / comm wait",
            f"{parts['forward_backward_ms']:.2f} / {parts['optimizer_ms']:.2f} / {parts['comm_wait_ms']:.2f} ms "
            f"({parts['timer']})"),
        row("  optimizer share of the step", f"{100 * share:.1f}%", f"<= {100 * OPTIMIZER_SHARE_TARGET:.0f}%",
            share <= OPTIMIZER_SHARE_TARGET),
        row("  peak memory (training step)", f"{raw['peak_memory_mib'] / 1024:.1f} GiB"),
    ]
    if raw.get("compile_time_s") is not None:
        rows.append(row("  first step (compilation)", f"{raw['compile_time_s']:.1f} s, "
                                                       f"{raw.get('graphs_compiled_in_warmup')} graph(s) by the timed steps"))
    problems = []
    if raw.get("graphs_compiled_while_timed"):
        problems.append(f"{raw['graphs_compiled_while_timed']} graphs compiled during the timed steps (recompiles)")
    if raw.get("graphs_compiled_while_timed") is not None:
        rows.append(row("  graphs compiled during timed steps", str(raw["graphs_compiled_while_timed"]), "0",
                        raw["graphs_compiled_while_timed"] == 0))
    if raw.get("graph_breaks"):
        problems.append(f"{raw['graph_breaks']} graph break(s) in the compiled model")
    val = raw.get("validation")
    if val:
        fits = val["peak_memory_mib"] <= GPU_80GB_MIB
        rows.append(row(f"  validation of {val['tokens']:,} tokens: peak memory, time (first call, compiling)",
                        f"{val['peak_memory_mib'] / 1024:.1f} GiB, {val['seconds']:.1f} s",
                        f"<= {GPU_80GB_MIB / 1024:.1f} GiB (80 GB GPU)", fits))
    figures = {k: raw.get(k) for k in ("step_ms_mean", "step_ms_median", "tokens_per_s", "mfu", "peak_memory_mib",
                                       "compile_time_s", "graphs_compiled_in_warmup", "graphs_compiled_while_timed",
                                       "graph_breaks", "orthogonalized")}
    return {"figures": {**figures, "breakdown": parts, "validation": val}, "rows": rows, "problems": problems,
            "raw": raw}


def step_worker(out: str, config: str, overrides: list[str], warmup: int, steps: int, validate_too: bool) -> dict:
    """In the step stage's own process: the whole step timed as bench_step times it, then the same
    steps phase by phase as bench_comm times them (one model, one compilation), then (validate_too) one
    validation of eval.tokens random tokens with its peak memory."""
    from scripts.bench_comm import time_phases
    from scripts.bench_step import random_shards, summarize, time_steps
    from training.config import load_config, validate
    from training.distributed import init_distributed, shutdown
    from training.hardware import peak_memory_mib, reset_peak_memory, synchronize
    from training.trainer import Trainer

    cfg = load_config(config, overrides)
    validate(cfg, 1)
    info = init_distributed(cfg.device, cfg.distributed.timeout_s, cfg.distributed.one_rank_group)
    watch = compile_watch()
    with tempfile.TemporaryDirectory() as tmp:
        rows = cfg.data.batch_tokens // cfg.model.seq_len
        need = (warmup + 2 * steps + 2) * (rows + 1) * (cfg.model.seq_len + 1)
        trainer = Trainer(cfg, info)
        trainer.build(random_shards(Path(tmp), cfg.model.vocab_size, min(need, 2**31 - 1)))
        at = cfg.schedule.steps // 2
        t0 = time.perf_counter()
        trainer.step(at)  # the first step: compilation (and autotuning)
        synchronize(info.device)
        compile_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            trainer.step(at)
        seen = watch.new_graphs() if watch else None
        whole = summarize(trainer, time_steps(trainer, at, 0, steps), trainer.window_size(at))
        parts = time_phases(trainer, at, 0, steps)
        during = watch.new_graphs() if watch else None
        val = None
        if validate_too:
            trainer.val_files = random_shards(Path(tmp), cfg.model.vocab_size, cfg.eval.tokens + 1, seed=1,
                                              name="random_val_000000.bin")
            reset_peak_memory(info.device)
            t0 = time.perf_counter()
            loss = trainer.validate(cfg.schedule.steps)  # the final validation: all of eval.tokens
            synchronize(info.device)
            val = {"tokens": cfg.eval.tokens, "seconds": time.perf_counter() - t0, "loss": loss,
                   "peak_memory_mib": peak_memory_mib(info.device)}
    result = {"config": config, "overrides": overrides, **whole, "warmup_steps": warmup, "breakdown": parts,
              "compile_time_s": compile_s, "graphs_compiled_in_warmup": seen, "graphs_compiled_while_timed": during,
              "graph_breaks": watch.graph_breaks if watch else None, "orthogonalized": trainer.orthogonalized,
              "one_rank_group": info.active, "validation": val}
    atomic_write_json(out, result)
    shutdown()
    return result


def compile_watch():
    """training.compilation's counter of compiled graphs, started; None where it is not available."""
    try:
        from training.compilation import CompileWatch
    except ImportError:
        return None
    return CompileWatch().start()


# train -----------------------------------------------------------------------------------------


def real_shards(settings: Settings) -> bool:
    """Whether the config's train and validation shards exist (relative paths: from the repository,
    where the stages run)."""
    from training.config import load_config

    d = load_config(settings.config, list(settings.overrides)).data
    if d.synthetic:
        return False
    return all(glob.glob(p if os.path.isabs(p) else str(REPO / p)) for p in (d.train_files, d.val_files))


def shakespeare_overrides(folder: Path = REPO / SHAKESPEARE_CHAR) -> list[str] | None:
    """The train stage's data on the character-level Shakespeare shards (real text), or None without them."""
    vocab = folder / "vocab.json"
    train, val = sorted(folder.glob("shakespeare_train_*.bin")), sorted(folder.glob("shakespeare_val_*.bin"))
    if not (vocab.is_file() and train and val):
        return None
    v = json.loads(vocab.read_text())
    return [f"--data.train_files={folder}/shakespeare_train_*.bin", f"--data.val_files={folder}/shakespeare_val_*.bin",
            f"--model.vocab_size={v['vocab_size']}", f"--model.eot_token={v['separator_id']}",
            f"--eval.tokens={SHAKESPEARE_EVAL_TOKENS}"]


def train_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    n, tokens = settings.train_steps, settings.tokens_per_gpu
    data = settings.train_data if settings.train_data is not None else shakespeare_overrides()
    if data is None:
        data = [] if real_shards(settings) else [
            "--data.synthetic=true", f"--data.synthetic_dir={scratch / 'synthetic'}",
            f"--data.synthetic_train_tokens={(n + 4) * (tokens + 1)}"]
    return [settings.python, "train_gpt.py", "--config", settings.config, f"--data.batch_tokens={tokens}",
            f"--schedule.steps={n}", "--log.every=10", "--eval.every=0", f"--log.dir={scratch / 'runs'}",
            "--log.run_id=train", "--checkpoint.every=0", "--checkpoint.final=false", *data, *settings.overrides]


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["train_loss"] for r in rows if r.get("train_loss") is not None]


def compile_checks(summary: dict, output: str) -> tuple[dict, list[str]]:
    """Recompiles, graph breaks and eager fallbacks from summary.json (a missing key or a null is "unknown",
    never 0) and from the output."""
    figures = {key: summary[key] if isinstance(summary.get(key), int) else "unknown"
               for key in ("recompiles", "compile_fallbacks", "graph_breaks", "graphs_compiled")}
    figures["fallback_warnings"] = len(FALLBACK_WARNING.findall(output))
    figures["recompiles_logged"] = output.count(RECOMPILE_LOG)
    problems = []
    if isinstance(figures["compile_fallbacks"], int) and figures["compile_fallbacks"] > 0:
        problems.append(f"summary.json: compile_fallbacks = {figures['compile_fallbacks']} (eager fallback)")
    if isinstance(figures["graph_breaks"], int) and figures["graph_breaks"] > 0:
        problems.append(f"summary.json: graph_breaks = {figures['graph_breaks']}")
    if figures["fallback_warnings"]:
        problems.append(f"torch warned {figures['fallback_warnings']} times that a recompile limit was hit "
                        "(that code runs eagerly)")
    return figures, problems


def train_read(settings: Settings, scratch: Path, output: str) -> dict:
    run_dir = scratch / "runs" / "train"
    summary = read_json(run_dir / "summary.json")
    losses = train_losses(run_dir)
    first, last = (losses[0], losses[-1]) if losses else (math.nan, math.nan)
    fell = bool(losses) and last <= first - LOSS_DROP
    compiled, problems = compile_checks(summary, output)
    if summary.get("status") != "completed":
        problems.append(f"the run ended {summary.get('status')}: {summary.get('error')}")
    if not fell:
        problems.append(f"the train loss did not fall by {LOSS_DROP} nats ({first:.4f} -> {last:.4f})")
    data = "synthetic" if summary.get("synthetic_data") else describe_data(summary)
    figures = {"status": summary.get("status"), "steps": summary.get("steps"), "first_train_loss": first,
               "last_train_loss": last, "final_val_loss": summary.get("final_val_loss"),
               "step_avg_ms": summary.get("step_avg_ms"), "peak_memory_mib": summary.get("peak_memory_mib"),
               "compile_time_s": summary.get("compile_time_s"), "data": data, **compiled}
    val = summary.get("final_val_loss")
    rows = [row(f"training run, {summary.get('steps')} steps ({data}): train loss",
                f"{first:.3f} -> {last:.3f}, val {val if val is None else round(val, 4)}", "falls", fell),
            row("  step_avg, compile (warm-up)", f"{summary.get('step_avg_ms') or math.nan:.2f} ms, "
                f"{summary.get('compile_time_s') or math.nan:.1f} s"),
            row("  compile fallbacks / graph breaks (summary.json) / warnings",
                f"{compiled['compile_fallbacks']} / {compiled['graph_breaks']} / {compiled['fallback_warnings']}",
                "0 / 0 / 0", None if not isinstance(compiled["compile_fallbacks"], int)
                else compiled["compile_fallbacks"] == 0 and compiled["fallback_warnings"] == 0
                and compiled["graph_breaks"] in (0, "unknown")),
            row("  graphs compiled / recompiles (summary.json) / logged",
                f"{compiled['graphs_compiled']} / {compiled['recompiles']} / {compiled['recompiles_logged']}")]
    return {"figures": figures, "rows": rows, "problems": problems, "raw": summary}


def describe_data(summary: dict) -> str:
    """"shakespeare_char" or "shards" from a run's summary (its data.train_files)."""
    files = str((summary.get("data") or {}).get("train_files", ""))
    return "shakespeare_char" if "shakespeare" in files else "shards"


# record ----------------------------------------------------------------------------------------


def record_skip(settings: Settings) -> str | None:
    if not settings.record_log:
        return ("no --record-log given (a log from modded-nanogpt's records, e.g. "
                "records/track_1_short/2025-01-26_BatchSize/<id>.txt)")
    if not Path(settings.record_log).is_file():
        return f"--record-log {settings.record_log}: no such file"
    return None


def record_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    each = max(int((budget_s - 30) // 2), 30)  # two runs in the budget, with room to set up and clean up
    return [settings.python, "scripts/side_by_side.py", "--record-log", str(Path(settings.record_log).resolve()),
            "--config", settings.config, f"--steps={settings.record_steps}", f"--timeout-s={each}",
            "--out", str(scratch / "record.json"), *settings.overrides]


def record_read(settings: Settings, scratch: Path, output: str) -> dict:
    raw = read_json(scratch / "record.json")
    rec, ours, ratio = raw["record"], raw["ours"], raw.get("ratio")
    rows = [row(f"record script ({raw['tokens_per_gpu']:,} tokens/GPU, {raw['steps']} steps)", ms(rec)),
            row("our trainer, same GPU / shards / tokens / steps", ms(ours)),
            row("  ratio ours / record", "n/a" if ratio is None else f"{ratio:.3f}", "<= 1.00",
                None if ratio is None else ratio <= 1.0)]
    problems = [f"{name}: {run['error']}" for name, run in (("record", rec), ("ours", ours)) if run.get("error")]
    return {"figures": {"record_step_avg_ms": rec.get("step_avg_ms"), "ours_step_avg_ms": ours.get("step_avg_ms"),
                        "ratio": ratio}, "rows": rows, "problems": problems, "raw": raw}


def ms(run: dict) -> str:
    return "failed" if run.get("step_avg_ms") is None else f"{run['step_avg_ms']:.2f} ms/step"


STAGES = {
    "ns": Stage("ns", 45, "Newton-Schulz: plain torch vs Triton, bf16", ns_command, ns_read),
    "step": Stage("step", 150, "the config's step at 48x1024 tokens/GPU, the whole model compiled, its breakdown, "
                  "one 10,485,760-token validation", step_command, step_read),
    "step_group": Stage("step_group", 120, "the same step in a one-rank process group: the code path of 8 GPUs",
                        step_group_command, step_read),
    "train": Stage("train", 100, "a short training run: the loss falls, nothing falls back to eager",
                   train_command, train_read, env={"TORCH_LOGS": "recompiles"}),
    "tests": Stage("tests", 100, "pytest -m gpu", tests_command, tests_read),
    "record": Stage("record", 330, "the record's script and ours side by side", record_command, record_read,
                    skip=record_skip),
}


def select_stages(text: str) -> list[Stage]:
    """Stages named in a comma-separated list, in the fixed order of STAGES."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ValueError(f"--stages {text!r}: unknown {unknown or 'none given'}; choose from {','.join(STAGES)}")
    return [stage for name, stage in STAGES.items() if name in names]


def parse_budgets(items: list[str]) -> dict:
    """['train=200', 'ns=30,step=100'] -> {'train': 200, 'ns': 30, 'step': 100}."""
    budgets = {}
    for item in ",".join(items).split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        if name.strip() not in STAGES or not value.strip().replace(".", "", 1).isdigit():
            raise ValueError(f"--budget {item!r}: expected <stage>=<seconds> with a stage of {','.join(STAGES)}")
        budgets[name.strip()] = float(value)
    return budgets


# ----------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True)
class Finished:
    returncode: int | None  # None: killed at its time limit
    timed_out: bool
    seconds: float


def run_logged(cmd: list[str], log_path: Path, timeout_s: float, cwd: Path = REPO, env: dict | None = None) -> Finished:
    """Run `cmd` with its output (stdout and stderr, unbuffered) into `log_path`; at `timeout_s` its
    whole process group gets SIGTERM, then SIGKILL 10 s later."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}  # a killed run keeps its last lines
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return Finished(proc.wait(timeout=timeout_s), False, time.monotonic() - t0)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
            return Finished(None, True, time.monotonic() - t0)
        except BaseException:  # Ctrl-C, SIGTERM (exit_on_sigterm): take the stage's processes down too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise


def exit_on_sigterm() -> None:
    """SIGTERM (a time limit from outside) becomes SystemExit, so that run_logged takes the running
    stage's process group down with it instead of leaving it on the GPU."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def fresh_stem(folder: Path, name: str, suffixes: tuple = (".json",)) -> Path:
    """folder/name, or folder/name-2, -3, ...: the first whose files (name + each suffix) do not exist."""
    stem, n = folder / name, 1
    while any(stem.with_name(stem.name + s).exists() for s in suffixes):
        n += 1
        stem = folder / f"{name}-{n}"
    return stem


def run_stage(stage: Stage, settings: Settings, scratch: Path, log_path: Path, left_s: float | None) -> dict:
    """Run one stage and read its figures; returns its record (status ok, failed, timed_out, skipped)."""
    base = {"stage": stage.name, "about": stage.about, "rows": [], "problems": []}
    reason = stage.skip(settings)
    budget = float(settings.budgets.get(stage.name, stage.budget_s))
    if reason is None and left_s is not None:
        if left_s < MIN_STAGE_S:
            reason = f"not started: {left_s:.0f} s left of --time-limit-s"
        budget = min(budget, left_s)
    if reason:
        return {**base, "status": "skipped", "reason": reason}
    cmd = stage.command(settings, scratch, budget)
    done = run_logged(cmd, log_path, budget, env=stage.env)
    output = log_path.read_text(errors="replace")
    try:
        read = stage.read(settings, scratch, output)
    except Exception as e:  # no or unreadable output: the failure is the figure
        read = {"figures": {}, "rows": [], "problems": [f"no figures: {type(e).__name__}: {e}"], "raw": None}
    if done.timed_out:
        status = "timed_out"
        read["problems"] = [f"killed at its budget of {budget:.0f} s", *read["problems"]]
    else:
        status = "ok" if done.returncode == 0 and not read["problems"] else "failed"
        if done.returncode != 0:
            read["problems"] = [f"exit code {done.returncode}", *read["problems"]]
    return {**base, **read, "status": status, "seconds": round(done.seconds, 1), "budget_s": budget,
            "returncode": done.returncode, "command": cmd, "log": log_path.name, "output_tail": tail(output)}


def write_archive(folder: Path, archive: Path) -> None:
    """`folder` as a .tar.gz at `archive`, written beside it and renamed into place (never half written)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    os.replace(partial, archive)


def run_check(stages: list[Stage], settings: Settings, out_dir: Path, env: dict,
              archive: Path | None = None) -> list[dict]:
    """Every stage in order; each stage's JSON is written as soon as it ends, check.json (and the archive)
    after each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_path = fresh_stem(out_dir, "check").with_suffix(".json")
    t0, results = time.monotonic(), []
    plan = {"stages": [s.name for s in stages], "settings": settings_json(settings), "started": env["time"]}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for stage in stages:
            left = None if settings.time_limit_s is None else settings.time_limit_s - (time.monotonic() - t0)
            stem = fresh_stem(out_dir, stage.name, (".json", ".log.txt"))
            scratch = Path(tmp) / stage.name
            scratch.mkdir()
            print(f"[gpu_check] {stage.name}: {stage.about} ...", flush=True)
            result = run_stage(stage, settings, scratch, stem.with_name(stem.name + ".log.txt"), left)
            results.append(result)
            atomic_write_json(stem.with_name(stem.name + ".json"), {**result, "environment": env})
            atomic_write_json(check_path, {**plan, "environment": env, "results": results})
            if archive:
                write_archive(out_dir, archive)
            print(f"[gpu_check] {stage.name}: {result['status']}" + "".join(f"; {p}" for p in result["problems"]),
                  flush=True)
    return results


def settings_json(settings: Settings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()}


def environment() -> dict:
    import torch

    from training.run_dir import git_commit

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    props = torch.cuda.get_device_properties(0)
    return {"time": datetime.datetime.now().isoformat(timespec="seconds"), "device": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1), "devices_visible": torch.cuda.device_count(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "git_commit": git_commit(), "argv": sys.argv[1:]}


def default_out_dir(device: str, date: datetime.date | None = None) -> Path:
    """records/gpu/<YYYY-MM-DD>_<device, lower case, runs of other characters as '-'>."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "unknown-device"
    return REPO / "records" / "gpu" / f"{(date or datetime.date.today()).isoformat()}_{slug}"


def table(results: list[dict]) -> str:
    """The final table: one line per figure (the first line of a stage carries its status and time)."""
    lines = [("stage", "status", "time", "figure", "value", "target", "verdict")]
    for r in results:
        head = (r["stage"], r["status"], f"{r['seconds']:.0f}s" if "seconds" in r else "")
        rows = r["rows"] + [row(f"problem: {p}", "") for p in r["problems"]] or [row(r.get("reason") or "-", "")]
        for i, x in enumerate(rows):
            lines.append((*(head if i == 0 else ("", "", "")), x["figure"], x["value"], x["target"], x["verdict"]))
    # notes (a skip reason, a problem: no value) run on past the figure column instead of widening it
    measured = [line for line in lines if line[4] or line is lines[0]]
    widths = [max(len(line[i]) for line in (lines if i < 3 else measured)) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------
# the command line


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--config", default="configs/speedrun_124m.toml")
    parser.add_argument("--record-log", help="a modded-nanogpt record log (its script is run by the record stage)")
    parser.add_argument("--tokens-per-gpu", type=int, default=TOKENS_PER_GPU)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--record-steps", type=int, default=100)
    parser.add_argument("--budget", action="append", default=[], help="stage=seconds (repeat or comma-separate)")
    parser.add_argument("--time-limit-s", type=float, default=None, help="all stages together (default: no limit)")
    parser.add_argument("--out-dir", default=None, help="default: records/gpu/<date>_<device>")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (works without a GPU)")
    parser.add_argument("--worker", choices=["step"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=10, help="step stage: untimed steps")
    parser.add_argument("--steps", type=int, default=20, help="step stage: timed steps")
    parser.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--archive", default=None,
                        help="also write the whole out-dir as this .tar.gz, after every stage")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--") or "." not in o.split("=")[0]]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --section.key=value)")
    return parser, args, overrides


def config_path(config: str) -> str:
    """An absolute path (the stages run in the repository): as given from here, else from the repository."""
    path = Path(config)
    return str(path.resolve() if path.is_absolute() or path.exists() else REPO / path)


def print_plan(stages: list[Stage], settings: Settings) -> None:
    scratch = Path(tempfile.gettempdir()) / "gpu_check_<stage>"
    total = 0.0
    for stage in stages:
        reason = stage.skip(settings)
        budget = float(settings.budgets.get(stage.name, stage.budget_s))
        if reason:
            print(f"{stage.name:10} skipped: {reason}")
            continue
        total += budget
        print(f"{stage.name:10} {budget:5.0f} s  {stage.about}\n        "
              + " ".join(stage.command(settings, scratch, budget)))
    limit = f" (clipped to --time-limit-s {settings.time_limit_s:.0f})" if settings.time_limit_s else ""
    print(f"budgets add up to {total:.0f} s{limit}")


def main(argv: list[str] | None = None) -> int:
    parser, args, overrides = parse(argv)
    if args.worker:
        step_worker(args.worker_out, args.config, overrides, args.warmup, args.steps, not args.no_validate)
        return 0
    try:
        stages = select_stages(args.stages)
        budgets = parse_budgets(args.budget)
    except ValueError as e:
        parser.error(str(e))
    settings = Settings(config=config_path(args.config), overrides=tuple(overrides), tokens_per_gpu=args.tokens_per_gpu,
                        train_steps=args.train_steps, record_steps=args.record_steps, step_warmup=args.warmup,
                        step_steps=args.steps, record_log=args.record_log, budgets=budgets,
                        time_limit_s=args.time_limit_s)
    if args.dry_run:
        print_plan(stages, settings)
        return 0
    if not cuda_available():
        print(no_gpu_message("gpu_check"), file=sys.stderr)
        return EXIT_NO_GPU
    exit_on_sigterm()
    env = environment()
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(env["device"])
    print(f"GPU check on {env['device']} (torch {env['torch']}, triton {env['triton']}) -> {out_dir}", flush=True)
    archive = Path(args.archive).resolve() if args.archive else None
    results = run_check(stages, settings, out_dir, env, archive)
    text = table(results)
    print(text)
    (fresh_stem(out_dir, "table", (".txt",)).with_suffix(".txt")).write_text(text + "\n")
    if archive:
        write_archive(out_dir, archive)
    print(f"wrote {out_dir}" + (f" and {archive}" if archive else ""))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
