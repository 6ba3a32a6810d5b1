"""The GPU check's stages (scripts/gpu/check.py says what each measures): per stage its command, its
reader (figures, table rows with targets, problems) and its budget, in the order they run.
The step stages run scripts/gpu/step_worker.py."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from common.paths import REPO
from scripts.gpu.running import Stage, read_json, row

TOKENS_PER_GPU = 48 * 1024  # the record's tokens per GPU per step (2025-01-26: seq_len = 48*1024)
VAL_TOKENS = 10_485_760  # the speedrun's validation: the first 10,485,760 tokens of the val shard
GPU_80GB_MIB = 81_559 - 2_048  # an H100 80GB's 81,559 MiB less room for the CUDA context and fragmentation
SHAKESPEARE_CHAR = "data/shakespeare_char"  # python3 -m data.shakespeare writes it (real text, a few MB)
SHAKESPEARE_EVAL_TOKENS = 262_144  # one validation batch of the speedrun config (eval.seq_len), within the 488k of val
LOSS_DROP = 0.5  # nats: the short run's last logged train loss must be this far below its first
NS_SHAPES = "48x768x768,12x768x3072,1x4096x4096"
NS_TARGETS = {"12x768x3072": 1.3, "1x4096x4096": 1.5}  # Triton speed-up over plain torch bf16
OPTIMIZER_SHARE_TARGET = 0.05
FALLBACK_WARNING = re.compile(r"hit config\.(recompile_limit|cache_size_limit)")
RECOMPILE_LOG = "Recompiling function"  # a TORCH_LOGS=recompiles line


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


def ns_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    return [settings.python, "-m", "scripts.bench.newton_schulz", "--shapes", NS_SHAPES,
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


def step_command(settings: Settings, scratch: Path, budget_s: float, group: bool = False) -> list[str]:
    extra = ["--distributed.one_rank_group=true", "--no-validate"] if group else [f"--eval.tokens={VAL_TOKENS}"]
    return [settings.python, "-m", "scripts.gpu.step_worker", "--out", str(scratch / "step.json"),
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
    return ["--data.synthetic=false", f"--data.train_files={folder}/shakespeare_train_*.bin",
            f"--data.val_files={folder}/shakespeare_val_*.bin",
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


def record_skip(settings: Settings) -> str | None:
    if not settings.record_log:
        return ("no --record-log given (a log from modded-nanogpt's records, e.g. "
                "records/track_1_short/2025-01-26_BatchSize/<id>.txt)")
    if not Path(settings.record_log).is_file():
        return f"--record-log {settings.record_log}: no such file"
    return None


def record_command(settings: Settings, scratch: Path, budget_s: float) -> list[str]:
    each = max(int((budget_s - 30) // 2), 30)  # two runs in the budget, with room to set up and clean up
    return [settings.python, "-m", "scripts.gpu.side_by_side", "--record-log", str(Path(settings.record_log).resolve()),
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
