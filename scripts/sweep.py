"""Sweeps: many training runs from one TOML spec, scheduled across the GPUs of a node, resumable,
summarized as results.csv and lr_transfer.png (final loss against learning rate, one curve per
width, one panel per optimizer: the layout of Figure 1 of the Scion paper).

    python scripts/sweep.py --spec configs/sweeps/smoke.toml                 # CPU: one run after another
    python scripts/sweep.py --spec configs/sweeps/lr_transfer_fineweb.toml   # every GPU of the node
    python scripts/sweep.py --spec SPEC --dry-run          # the plan: each run, its status, its overrides
    python scripts/sweep.py --spec SPEC --retry-failed     # also re-run the runs that failed
    python scripts/sweep.py --spec SPEC --gpus 0,1,2,3     # only these GPUs

A spec names a base config, overrides for every run, axes (config keys and their values; the runs
are every combination), extra overrides that go with an axis value, and how many GPUs one run
uses (see configs/sweeps/smoke.toml). Everything goes to <out>/<name>/ (default sweeps/<name>/):

    runs/<run_id>/         each run's directory (the trainer's --log.dir / --log.run_id)
    logs/<run_id>.txt      each run's stdout and stderr, one block per attempt
    failures/<run_id>.txt  why a run failed (exit code, last lines of output); retried only on request
    sweep.json             the base config, overrides and extras the runs were made with
    results.csv            one row per run: axes, status, final val loss, diverged, time
    lr_transfer.png        the figure

A run is finished when its summary.json says completed or diverged (a diverged run is a result:
diverged = true, final_val_loss = nan). Re-running a spec skips finished runs, resumes runs that a
stopped sweep left half done (--checkpoint.resume=latest), and leaves failed runs alone unless
--retry-failed. One run's failure never stops the others.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.config import toml_value  # noqa: E402  (plain Python: no torch)
from training.exit_codes import EXIT_DIVERGED, EXIT_INTERRUPTED  # noqa: E402
from training.exit_codes import MEANINGS as EXIT_MEANINGS  # noqa: E402

TRAIN_SCRIPT = REPO / "train_gpt.py"
FINISHED = ("completed", "diverged")
SPEC_KEYS = ("name", "base", "gpus_per_run", "overrides", "axes", "extra", "plot")
SWEEP_OWNED_KEYS = ("log.dir", "log.run_id", "checkpoint.resume")
ERROR_TAIL_LINES = 40
ERROR_LINE = re.compile(r"(^|\s)([\w.]*(Error|Exception)|error):")  # "config error: ...", "RuntimeError: ..."


class SpecError(ValueError):
    """A sweep spec that cannot be planned; the message names the offending key."""


# ----------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class Axis:
    """One swept config key: a list of values, or (with `by`) a list per value of an earlier axis,
    e.g. learning rates per optimizer."""

    key: str
    values: tuple = ()
    by: str | None = None
    per_value: dict = field(default_factory=dict)  # format_value(value of `by`) -> tuple of values

    def values_for(self, assigned: dict) -> tuple:
        """This axis's values, given the values already chosen for the axes before it."""
        if self.by is None:
            return self.values
        key = format_value(assigned[self.by])
        if key not in self.per_value:
            raise SpecError(f"axes.{self.key}: no values for {self.by} = {key} (have: {', '.join(self.per_value)})")
        return self.per_value[key]


@dataclass(frozen=True)
class PlotSpec:
    """Which axes the figure uses; every other axis (seeds) is averaged over."""

    x: str = "optim.lr"
    curves: str = "model.width"
    panels: str = "optim.name"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: str  # the base config, as written in the spec (relative to the repository root)
    axes: tuple[Axis, ...]
    overrides: dict = field(default_factory=dict)  # dotted key -> value, for every run
    extra: dict = field(default_factory=dict)  # axis key -> format_value(value) -> {dotted key: value}
    gpus_per_run: int = 1
    plot: PlotSpec = PlotSpec()

    @property
    def base_path(self) -> Path:
        path = Path(self.base)
        return path if path.is_absolute() else REPO / path


def format_value(value) -> str:
    """An axis value as text: in run ids, extra-table keys and the CSV (floats exactly, via repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"width": 64}} -> {"model.width": 64}. A table with a `by` key is a value
    (a dependent axis), so it is kept whole."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "by" not in value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec (TOML); see configs/sweeps/smoke.toml for every field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(SPEC_KEYS)})")
    name = str(raw.get("name", path.stem))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpecError(f"name = {name!r}: use letters, digits, '_', '-' and '.' (it names a folder)")
    if "base" not in raw:
        raise SpecError(f"{path}: no `base` (the config file every run starts from)")
    axes = parse_axes(raw.get("axes", {}))
    spec = SweepSpec(
        name=name, base=raw["base"], axes=axes, overrides=flatten(raw.get("overrides", {})),
        extra=parse_extra(raw.get("extra", {}), axes), gpus_per_run=int(raw.get("gpus_per_run", 1)),
        plot=parse_plot(raw.get("plot", {})),
    )
    check_spec(spec)
    return spec


def parse_axes(tree: dict) -> tuple[Axis, ...]:
    """The [axes] table, in the order written: `key = [values]` or `key = {by = "other", a = [...], b = [...]}`."""
    axes = []
    for key, value in flatten(tree).items():
        if isinstance(value, list):
            axis = Axis(key, tuple(value))
        elif isinstance(value, dict):
            by = value["by"]
            per_value = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in value.items() if k != "by"}
            if by not in [a.key for a in axes]:
                raise SpecError(f"axes.{key}: by = {by!r} must name an axis listed before it")
            axis = Axis(key, by=by, per_value=per_value)
        else:
            raise SpecError(f"axes.{key}: expected a list of values or a table with `by`, got {value!r}")
        lists = [axis.values] if axis.by is None else list(axis.per_value.values())
        if not all(lists):
            raise SpecError(f"axes.{key}: an empty list of values")
        axes.append(axis)
    if not axes:
        raise SpecError("[axes] is empty: a sweep needs at least one axis")
    return tuple(axes)


def parse_plot(table: dict) -> PlotSpec:
    valid = list(PlotSpec.__dataclass_fields__)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise SpecError(f"plot: unknown key(s) {', '.join(unknown)} (valid: {', '.join(valid)})")
    return PlotSpec(**table)


def parse_extra(tree: dict, axes: tuple[Axis, ...]) -> dict:
    """[extra."axis.key"] tables: axis value -> {dotted key: value} of further overrides."""
    keys = [a.key for a in axes]
    extra = {}
    for axis_key, table in tree.items():
        if axis_key not in keys:
            raise SpecError(f"extra.{axis_key}: not an axis (axes: {', '.join(keys)}); "
                            f'quote dotted axis keys: [extra."model.width"]')
        extra[axis_key] = {str(value): flatten(over) for value, over in table.items()}
    return extra


def check_spec(spec: SweepSpec) -> None:
    """Combinations that cannot work: keys set twice, keys the sweep owns, plot axes that don't exist."""
    keys = [a.key for a in spec.axes]
    if len(set(keys)) != len(keys):
        raise SpecError(f"an axis is listed twice: {keys}")
    for key in (*spec.overrides, *(k for per in spec.extra.values() for over in per.values() for k in over)):
        if key in SWEEP_OWNED_KEYS:
            raise SpecError(f"{key} is set by the sweep for each run; remove it from the spec")
        if key in keys:
            raise SpecError(f"{key} is an axis and also a fixed or extra override; keep one")
    if spec.gpus_per_run < 1:
        raise SpecError(f"gpus_per_run must be >= 1, got {spec.gpus_per_run}")
    if spec.plot.x not in keys:
        raise SpecError(f"plot.x = {spec.plot.x!r} is not an axis (axes: {', '.join(keys)})")


# ----------------------------------------------------------------------------------------------
# The plan: one run per combination of axis values


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    values: dict  # axis key -> value, in axis order
    overrides: tuple[str, ...]  # --key=value: fixed overrides, axis values, extras


def plan_runs(spec: SweepSpec) -> list[PlannedRun]:
    """Every combination of axis values (the first axis varies slowest), with its overrides."""
    combos = [{}]
    for axis in spec.axes:
        combos = [{**c, axis.key: v} for c in combos for v in axis.values_for(c)]
    names = short_names([a.key for a in spec.axes])
    runs = [PlannedRun(run_id(values, names), values, run_overrides(spec, values)) for values in combos]
    seen = {}
    for run in runs:
        if run.run_id in seen:
            raise SpecError(f"two runs get the id {run.run_id}: {seen[run.run_id]} and {run.values} (repeated values?)")
        seen[run.run_id] = run.values
    return runs


def short_names(keys: list[str]) -> dict:
    """Each key's last part ('optim.lr' -> 'lr'), or the whole key where last parts clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last, strict=True)}


def run_id(values: dict, names: dict) -> str:
    """A readable, filesystem-safe id from the axis values: 'name-muon_width-256_lr-0.05_seed-0'."""
    parts = [f"{names[k]}-{format_value(v)}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", "_".join(parts))


def run_overrides(spec: SweepSpec, values: dict) -> tuple[str, ...]:
    """The run's overrides: fixed ones, then axis values, then the extras of its axis values."""
    merged = dict(spec.overrides)
    merged.update(values)
    for key, value in values.items():
        merged.update(spec.extra.get(key, {}).get(format_value(value), {}))
    return tuple(f"--{k}={toml_value(v)}" for k, v in merged.items())


# ----------------------------------------------------------------------------------------------
# The sweep folder and the state of each run


class SweepDir:
    """sweeps/<name>/ and the paths inside it."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.runs, self.logs, self.failures = self.root / "runs", self.root / "logs", self.root / "failures"
        self.results, self.figure = self.root / "results.csv", self.root / "lr_transfer.png"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def log_file(self, run_id: str) -> Path:
        return self.logs / f"{run_id}.txt"

    def failure_file(self, run_id: str) -> Path:
        return self.failures / f"{run_id}.txt"

    def summary(self, run_id: str) -> dict | None:
        path = self.run_dir(run_id) / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def status(self, run_id: str) -> str:
        """completed | diverged (finished), failed (recorded failure), pending (never ran, or a
        stopped sweep left it half done)."""
        summary = self.summary(run_id)
        if summary and summary.get("status") in FINISHED:
            return summary["status"]
        return "failed" if self.failure_file(run_id).is_file() else "pending"

    def error(self, run_id: str) -> str:
        """The one-line error of a recorded failure."""
        path = self.failure_file(run_id)
        if not path.is_file():
            return ""
        first = path.read_text().splitlines()[:1]
        return first[0].removeprefix("error: ") if first else ""

    def check_same_recipe(self, spec: SweepSpec) -> None:
        """Refuse to mix runs made from a different base config, fixed overrides or extras: their
        run ids would be the same but their results not. New axis values (and their extras) are
        fine. The first invocation writes sweep.json; later ones add new extras to it."""
        path = self.root / "sweep.json"
        recipe = {"base": spec.base, "overrides": spec.overrides, "extra": spec.extra}
        if path.is_file():
            before = json.loads(path.read_text())
            changed = [k for k in ("base", "overrides") if before[k] != recipe[k]]
            changed += [f"extra for {axis} = {value}" for axis, per in spec.extra.items() for value, over in per.items()
                        if before["extra"].get(axis, {}).get(value, over) != over]
            if changed:
                raise SpecError(f"{self.root} was run with a different {'; '.join(changed)} (see {path}); "
                                f"give the spec another name (or --out) for a new sweep")
            for axis, per in before["extra"].items():
                recipe["extra"][axis] = {**per, **recipe["extra"].get(axis, {})}
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recipe, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Slots: where runs execute


@dataclass(frozen=True)
class Slot:
    """A group of GPUs that runs one run at a time; no GPUs means the CPU."""

    gpus: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"GPU {','.join(self.gpus)}" if self.gpus else "CPU"


def detect_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else 0..count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def make_slots(gpus: list[str], per_run: int) -> list[Slot]:
    """Groups of `per_run` GPUs (left-over GPUs stay idle); one CPU slot without GPUs."""
    if not gpus:
        return [Slot()]
    if per_run > len(gpus):
        raise SpecError(f"gpus_per_run = {per_run} but only {len(gpus)} GPU(s): {','.join(gpus)}")
    return [Slot(tuple(gpus[i:i + per_run])) for i in range(0, len(gpus) - per_run + 1, per_run)]


def launch_command(run: PlannedRun, spec: SweepSpec, sweep: SweepDir, slot: Slot, train_script: Path,
                   resume: bool) -> tuple[list[str], dict]:
    """The command and environment of one run on one slot: `python train_gpt.py` on one GPU (or the
    CPU), `torchrun --standalone --nproc_per_node=k` on k GPUs. --standalone gives every group its
    own rendezvous on a free port, so concurrent groups never collide."""
    args = ["--config", str(spec.base_path), *run.overrides, f"--log.dir={sweep.runs}", f"--log.run_id={run.run_id}"]
    if resume:  # a directory from an earlier attempt: continue its latest checkpoint, or start over in it
        args.append("--checkpoint.resume=latest")
    env = dict(os.environ)
    if slot.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
    if len(slot.gpus) > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(slot.gpus)}"]
    else:
        launcher = [sys.executable]
    return [*launcher, str(train_script), *args], env


# ----------------------------------------------------------------------------------------------
# Running the plan


@dataclass
class Progress:
    """Counts for the progress line; the time left is the mean duration of the runs finished by
    this invocation x the runs left / the number of slots."""

    total: int
    done: int
    failed: int
    slots: int
    durations: list = field(default_factory=list)

    def line(self, running: int, queued: int) -> str:
        left = running + queued
        if not left:
            eta = "nothing left"
        elif self.durations:
            eta = f"~{format_duration(statistics.fmean(self.durations) * left / self.slots)} left"
        else:
            eta = "time left: after the first run"
        return (f"[{time.strftime('%H:%M:%S')}] {self.done}/{self.total} done, {self.failed} failed, "
                f"{running} running, {queued} queued, {eta}")


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


@dataclass
class Launched:
    run: PlannedRun
    slot: Slot
    proc: subprocess.Popen
    command: list[str]
    started: float
    log_offset: int  # where this attempt's output starts in the run's log file


class Sweeper:
    """Runs planned runs on a pool of slots, one run per slot at a time, each in its own process."""

    def __init__(self, spec: SweepSpec, sweep: SweepDir, slots: list[Slot], progress: Progress,
                 train_script: Path = TRAIN_SCRIPT, poll_s: float = 0.2, say=print):
        self.spec, self.sweep, self.slots, self.progress = spec, sweep, slots, progress
        self.train_script, self.poll_s, self.say = Path(train_script), poll_s, say
        self.stopping = False

    def start(self, run: PlannedRun, slot: Slot) -> Launched:
        """Launch one run; its output goes to logs/<run_id>.txt. A retried run's old failure record
        is kept as failures/<run_id>.attemptN.txt."""
        failure = self.sweep.failure_file(run.run_id)
        if failure.is_file():
            n = len(list(self.sweep.failures.glob(f"{run.run_id}.attempt*.txt"))) + 1
            failure.rename(failure.with_name(f"{run.run_id}.attempt{n}.txt"))
        resume = self.sweep.run_dir(run.run_id).exists()
        command, env = launch_command(run, self.spec, self.sweep, slot, self.train_script, resume)
        log = self.sweep.log_file(run.run_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} on {slot}: {shlex.join(command)}\n")
            f.flush()
            offset = f.tell()
            # own session: a Ctrl-C at the terminal reaches the sweep only, which then stops each run once
            proc = subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.say(f"start  {run.run_id} on {slot}{' (resuming)' if resume else ''}")
        return Launched(run, slot, proc, command, time.time(), offset)

    def finish(self, job: Launched, code: int) -> str:
        """Classify a run that exited: completed / diverged, pending (stopped by this sweep), or failed."""
        elapsed = time.time() - job.started
        summary = self.sweep.summary(job.run.run_id) or {}
        status = summary.get("status")
        if code in (0, EXIT_DIVERGED) and status in FINISHED:
            self.progress.done += 1
            self.progress.durations.append(elapsed)
            loss = summary.get("final_val_loss")
            self.say(f"{status:<9} {job.run.run_id}: final val loss {loss}, {format_duration(elapsed)}")
            return status
        if self.stopping:  # we asked it to stop; its summary (if any) says "interrupted"
            self.say(f"stopped {job.run.run_id} (resumes on the next invocation)")
            return "pending"
        error = write_failure(self.sweep, job, code, elapsed)
        self.progress.failed += 1
        self.say(f"FAILED {job.run.run_id} (exit {code}): {error}")
        return "failed"

    def run_all(self, todo: list[PlannedRun]) -> bool:
        """Run every planned run; returns False if the sweep was interrupted (Ctrl-C, SIGTERM)."""
        queue, free, running = list(todo), list(self.slots), []
        self.say(self.progress.line(0, len(queue)))
        try:
            while queue or running:
                while queue and free:
                    running.append(self.start(queue.pop(0), free.pop(0)))
                time.sleep(self.poll_s)
                for job in [j for j in running if j.proc.poll() is not None]:
                    running.remove(job)
                    free.append(job.slot)
                    self.finish(job, job.proc.returncode)
                    self.say(self.progress.line(len(running), len(queue)))
        except KeyboardInterrupt:
            self.stop(running)
            return False
        return True

    def stop(self, running: list[Launched]) -> None:
        """Ask each running run to stop after its current step and write a checkpoint (one SIGINT);
        a second Ctrl-C sends a second SIGINT, which makes the trainer abort at once."""
        self.stopping = True
        self.say(f"interrupted: stopping {len(running)} running run(s) after their current step "
                 f"(Ctrl-C again to abort them)")
        for job in running:
            job.proc.send_signal(signal.SIGINT)
        try:
            for job in running:
                job.proc.wait()
        except KeyboardInterrupt:
            for job in running:
                if job.proc.poll() is None:
                    job.proc.send_signal(signal.SIGINT)
            for job in running:
                job.proc.wait()
        for job in running:
            self.finish(job, job.proc.returncode)


def write_failure(sweep: SweepDir, job: Launched, code: int, elapsed: float) -> str:
    """failures/<run_id>.txt: the error line, exit code, command and the last lines of output."""
    with open(sweep.log_file(job.run.run_id), "rb") as f:
        f.seek(job.log_offset)
        output = f.read().decode(errors="replace")
    tail = [line.rstrip() for line in output.splitlines() if line.strip()][-ERROR_TAIL_LINES:]
    meaning = EXIT_MEANINGS.get(code, f"killed by signal {-code}" if code < 0 else "crash")
    if code in (0, EXIT_DIVERGED):
        meaning = "exited without a finished summary.json"
    errors = [line for line in tail if ERROR_LINE.search(line) and "torch.distributed.elastic" not in line]
    error = (errors or tail or [f"exit code {code} ({meaning}), no output"])[-1].strip()  # torchrun's own
    # report of a failed worker names torch.distributed.elastic: the worker's error line is the news
    sweep.failures.mkdir(parents=True, exist_ok=True)
    sweep.failure_file(job.run.run_id).write_text(
        f"error: {error}\n"
        f"exit code: {code} ({meaning})\n"
        f"run: {job.run.run_id} on {job.slot}, after {format_duration(elapsed)}\n"
        f"when: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
        f"command: {shlex.join(job.command)}\n"
        f"full output: {sweep.log_file(job.run.run_id)}\n\n"
        f"--- last {len(tail)} lines of output ---\n" + "\n".join(tail) + "\n"
    )
    return error


# ----------------------------------------------------------------------------------------------
# Results: the CSV


def collect_results(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun]) -> list[dict]:
    """One row per planned run. final_val_loss is nan for a diverged run and None for a run
    without a result (failed, pending)."""
    rows = []
    for run in runs:
        status = sweep.status(run.run_id)
        summary = (sweep.summary(run.run_id) or {}) if status in FINISHED else {}
        loss = summary.get("final_val_loss") if status == "completed" else None
        if status == "diverged" or (loss is not None and not math.isfinite(loss)):
            loss = math.nan
        train_ms = summary.get("train_time_ms")
        rows.append({
            "run_id": run.run_id, **run.values, "status": status, "diverged": status == "diverged",
            "final_val_loss": loss, "steps": summary.get("steps"),
            "train_time_s": None if train_ms is None else round(train_ms / 1000, 3),
            "step_avg_ms": summary.get("step_avg_ms"), "error": sweep.error(run.run_id) if status == "failed" else "",
        })
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    """results.csv; empty cells for missing values, 'nan' for diverged losses."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else format_value(v) for k, v in row.items()})
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------
# Results: the learning-rate transfer figure


def transfer_curves(rows: list[dict], plot: PlotSpec) -> dict:
    """{panel value: {curve value: {x: mean final loss}}} over finished runs, averaging the other
    axes (seeds). A point where any run diverged is inf."""
    groups: dict = {}
    for row in rows:
        if row["status"] not in FINISHED:
            continue
        point = groups.setdefault(row.get(plot.panels), {}).setdefault(row.get(plot.curves), {})
        point.setdefault(row[plot.x], []).append(math.inf if row["diverged"] else row["final_val_loss"])
    return {panel: {curve: {x: statistics.fmean(v) for x, v in sorted(pts.items())} for curve, pts in _sorted(curves)}
            for panel, curves in groups.items()}


def _sorted(mapping: dict) -> list:
    """Items sorted by key when the keys are numbers (widths), else in order of appearance."""
    items = list(mapping.items())
    return sorted(items) if all(isinstance(k, (int, float)) for k, _ in items) else items


def best_x(points: dict):
    """The x of the lowest finite loss, or None."""
    finite = {x: y for x, y in points.items() if math.isfinite(y)}
    return min(finite, key=finite.get) if finite else None


def plot_lr_transfer(rows: list[dict], plot: PlotSpec, out: Path, title: str = "") -> Path | None:
    """Final loss against plot.x (log2 axis), one curve per plot.curves value, one panel per
    plot.panels value, the y range zoomed on the good losses. Each curve's best x is a star; a
    point above the range is a triangle at the top edge (its line leaves the panel); a diverged
    point is a cross at the top edge and not part of the curve. Returns None when no run has
    finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = transfer_curves(rows, plot)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(max(7.5, 5 * len(curves)), 4.2), sharey=True, squeeze=False,
                             constrained_layout=True)
    finite = [y for panel in curves.values() for pts in panel.values() for y in pts.values() if math.isfinite(y)]
    y_range = loss_range(finite)
    for ax, (panel, panel_curves) in zip(axes[0], curves.items(), strict=True):
        draw_panel(ax, panel_curves, plot, plt.get_cmap("viridis"), top=y_range[1] if y_range else math.inf)
        ax.set_title(f"{plot.panels} = {panel}" if panel is not None else title)
    axes[0][0].set_ylabel("final validation loss")
    if y_range:
        axes[0][0].set_ylim(*y_range)
    fig.suptitle(f"{title}: final val loss vs {plot.x}, one curve per {plot.curves}\n"
                 f"\u2605 best {plot.x} of each curve; \u25b2 above this range; \u00d7 diverged "
                 f"(not part of the curve)", fontsize=10)
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def loss_range(losses: list[float]) -> tuple[float, float] | None:
    """y limits from the best loss up to a few times its distance to the median loss, so that a
    few bad learning rates do not squash the differences near the optimum."""
    if not losses:
        return None
    lo, mid = min(losses), statistics.median(losses)
    span = max(mid - lo, 0.01 * abs(lo), 1e-3)
    return lo - 0.3 * span, min(max(losses), lo + 4 * span) + 0.3 * span


def draw_panel(ax, panel_curves: dict, plot: PlotSpec, cmap, top: float) -> None:
    """One panel: a line per curve through its finite points, its best point starred, points above
    `top` (triangles) and diverged points (crosses) marked at the top edge."""
    n = len(panel_curves)
    for i, (curve, points) in enumerate(panel_curves.items()):
        color = cmap(0.85 * i / max(n - 1, 1))
        xs = [x for x, y in points.items() if math.isfinite(y)]
        best = best_x(points)
        name = f"{plot.curves.rsplit('.', 1)[-1]} {curve}" if curve is not None else "all runs"
        label = name + (f": best {best:g}" if best is not None else "")
        ax.plot(xs, [points[x] for x in xs], "o-", color=color, lw=1.5, ms=4, label=label)
        if best is not None:
            ax.plot([best], [points[best]], "*", color=color, ms=16, mec="black", mew=0.8, zorder=5)
        at_top = ax.get_xaxis_transform()  # x in data units, y in axes units
        above = [x for x in xs if points[x] > top]
        if above:
            ax.plot(above, [0.97] * len(above), "^", color=color, ms=8, mec="black", mew=0.5, transform=at_top,
                    clip_on=False, zorder=6)
        diverged = [x for x, y in points.items() if not math.isfinite(y)]
        if diverged:
            ax.plot(diverged, [0.97] * len(diverged), "x", color=color, ms=9, mew=2, transform=at_top, clip_on=False)
    ax.set_xscale("log", base=2)
    grid = sorted({x for points in panel_curves.values() for x in points})
    ax.set_xticks(grid, [f"{x:.3g}" for x in grid], fontsize=8)  # the swept values, not powers of two
    ax.minorticks_off()
    ax.set_xlabel(f"{plot.x} (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


# ----------------------------------------------------------------------------------------------
# Command line


def describe_plan(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun], statuses: dict, slots: list[Slot],
                  retry_failed: bool, train_script: Path = TRAIN_SCRIPT) -> str:
    """The --dry-run listing: the command every run shares, then each run's action and own overrides."""
    todo = runs_to_do(runs, statuses, retry_failed)
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in ("completed", "diverged", "failed", "pending")}
    command, _ = launch_command(runs[0], spec, sweep, slots[0], train_script, False)
    fixed = [f"--{k}={toml_value(v)}" for k, v in spec.overrides.items()]
    lines = [
        f"sweep {spec.name}: {len(runs)} runs in {sweep.root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"{len(todo)} to run on {len(slots)} slot(s): {', '.join(map(str, slots))}",
        (f"each run: {shlex.join(command[:command.index('--config') + 2] + fixed)} <run overrides> "
         f"--log.dir={sweep.runs} --log.run_id=<run id>"),
    ]
    for run in runs:
        status = statuses[run.run_id]
        if run in todo:
            action = "retry" if status == "failed" else "run"
            action += " (resume)" if sweep.run_dir(run.run_id).exists() else ""
        else:
            action = "failed (skip)" if status == "failed" else status
        own = [o for o in run.overrides if o not in fixed]
        lines.append(f"  {action:<14} {run.run_id:<40} {' '.join(own)}")
    return "\n".join(lines)


def runs_to_do(runs: list[PlannedRun], statuses: dict, retry_failed: bool) -> list[PlannedRun]:
    """Pending runs, and failed ones when asked to retry them."""
    return [r for r in runs if statuses[r.run_id] == "pending" or (retry_failed and statuses[r.run_id] == "failed")]


def write_results(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun], say=print) -> list[dict]:
    rows = collect_results(spec, sweep, runs)
    say(f"results: {write_csv(rows, sweep.results)}")
    figure = plot_lr_transfer(rows, spec.plot, sweep.figure, title=spec.name)
    say(f"figure: {figure}" if figure else "figure: no finished run yet")
    return rows


def parse_gpus(text: str | None) -> list[str]:
    if text is None:
        return detect_gpus()
    return [] if text.strip().lower() in ("", "none", "cpu") else [g.strip() for g in text.split(",") if g.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="sweep spec (configs/sweeps/*.toml)")
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="parent of the sweep folder (default sweeps/)")
    parser.add_argument("--gpus", help="comma-separated GPU ids (default: all visible; 'none' for the CPU)")
    parser.add_argument("--gpus-per-run", type=int, help="GPUs per run (default: the spec's gpus_per_run)")
    parser.add_argument("--retry-failed", action="store_true", help="re-run runs whose failure was recorded")
    parser.add_argument("--dry-run", action="store_true", help="list the plan and each run's status; run nothing")
    parser.add_argument("--train-script", type=Path, default=TRAIN_SCRIPT, help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        runs = plan_runs(spec)
        sweep = SweepDir(args.out / spec.name)
        slots = make_slots(parse_gpus(args.gpus), args.gpus_per_run or spec.gpus_per_run)
        statuses = {r.run_id: sweep.status(r.run_id) for r in runs}
        if args.dry_run:
            print(describe_plan(spec, sweep, runs, statuses, slots, args.retry_failed, args.train_script))
            return 0
        sweep.check_same_recipe(spec)
    except SpecError as e:
        print(f"sweep spec error: {e}", file=sys.stderr)
        return 2
    todo = runs_to_do(runs, statuses, args.retry_failed)
    skipped_failures = 0 if args.retry_failed else sum(1 for s in statuses.values() if s == "failed")
    progress = Progress(total=len(runs), done=sum(1 for s in statuses.values() if s in FINISHED),
                        failed=skipped_failures, slots=len(slots))
    print(f"sweep {spec.name}: {len(runs)} runs, {progress.done} already finished, {len(todo)} to run on "
          f"{len(slots)} slot(s) ({', '.join(map(str, slots))})"
          + (f"; {skipped_failures} failed run(s) left alone (--retry-failed)" if skipped_failures else ""))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        finished = Sweeper(spec, sweep, slots, progress, args.train_script).run_all(todo)
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_results(spec, sweep, runs)
    if not finished:
        return EXIT_INTERRUPTED
    return 1 if progress.failed else 0


def _interrupt(signum, frame):
    """SIGTERM stops the sweep like Ctrl-C."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
