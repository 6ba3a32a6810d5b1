"""Stages with time budgets: each a subprocess whose output goes to a log file, killed with its process
group at its budget (or when the caller gets SIGTERM), read into figures and table rows, written as
JSON as soon as it ends (and into an archive), so that a check killed from outside keeps what it
measured. The GPU check (scripts/gpu/check.py) and the side by side (scripts/gpu/side_by_side.py) run on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.atomic import atomic_write_json
from common.paths import REPO

EXIT_NO_GPU = 77  # the automake/meson convention for "skipped": nothing to measure here
MIN_STAGE_S = 60  # under a time limit, a stage is not started with less than this left


def no_gpu_message(script: str) -> str:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return (f"{script}: no CUDA device (torch {torch.__version__}, {build}); this script measures GPU figures "
            f"only and exits with code {EXIT_NO_GPU}. On this machine run the CPU tests: python -m pytest -q")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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


def run_stage(stage: Stage, settings, scratch: Path, log_path: Path, left_s: float | None) -> dict:
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


def run_check(stages: list[Stage], settings, out_dir: Path, env: dict,
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


def settings_json(settings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()}


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
