"""Running a sweep's planned runs: the sweep folder and each run's state, GPU slots, the launch
command of a run (python or torchrun), and the scheduler that keeps every slot busy, resumes runs a
stopped sweep left half done and records why a run failed."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import atomic_write_json, atomic_write_text
from common.exit_codes import EXIT_CONFIG, EXIT_DIVERGED
from common.exit_codes import MEANINGS as EXIT_MEANINGS
from scripts.studies.spec import REPO, PlannedRun, SpecError, SweepSpec

TRAIN_SCRIPT = REPO / "train_gpt.py"
CPU_SLOTS_ENV = "SWEEP_CPU_SLOTS"  # runs at once on a machine without GPUs (default 1)
FINISHED = ("completed", "diverged")
ERROR_TAIL_LINES = 40
ERROR_LINE = re.compile(r"(^|\s)([\w.]*(Error|Exception)|error):")  # "config error: ...", "RuntimeError: ..."


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
        """completed | diverged (finished), failed (its summary says so, or a recorded failure),
        pending (never ran, or a stopped sweep left it half done)."""
        summary = self.summary(run_id)
        if summary and summary.get("status") in FINISHED:
            return summary["status"]
        failed = (summary and summary.get("status") == "failed") or self.failure_file(run_id).is_file()
        return "failed" if failed else "pending"

    def attempts(self, run_id: str) -> int:
        """How many attempts of this run failed (its current failure record and the earlier ones)."""
        earlier = len(list(self.failures.glob(f"{run_id}.attempt*.txt"))) if self.failures.is_dir() else 0
        return earlier + self.failure_file(run_id).is_file()

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
        atomic_write_json(path, recipe)


# ----------------------------------------------------------------------------------------------
# Slots: where runs execute


@dataclass(frozen=True)
class Slot:
    """A group of GPUs that runs one run at a time; no GPUs means the CPU."""

    gpus: tuple[str, ...] = ()
    share: int = 0  # which of the runs packed onto the same GPUs (runs_per_gpu > 1)

    def __str__(self) -> str:
        return (f"GPU {','.join(self.gpus)}" + (f" #{self.share}" if self.share else "")) if self.gpus else "CPU"


def detect_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else 0..count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(text: str | None) -> list[str]:
    """--gpus: comma-separated ids, 'none'/'cpu' for none, or (unset) every visible GPU."""
    if text is None:
        return detect_gpus()
    return [] if text.strip().lower() in ("", "none", "cpu") else [g.strip() for g in text.split(",") if g.strip()]


def interrupt_on_sigterm(_signum, _frame):
    """A SIGTERM handler: stop a sweep like Ctrl-C (the runner kills its runs and keeps what finished)."""
    raise KeyboardInterrupt


def make_slots(gpus: list[str], per_run: int, cpu_slots: int | None = None, runs_per_gpu: int = 1) -> list[Slot]:
    """Groups of `per_run` GPUs (left-over GPUs stay idle), each shared by `runs_per_gpu` runs at once (small
    models leave a GPU idle: packing several fills it; scripts/bench/packing.py measures how many pay). Without
    GPUs, `cpu_slots` CPU slots: that many runs at once (default: the environment variable SWEEP_CPU_SLOTS, else
    1, one run after another); give each run OMP_NUM_THREADS = cores / slots, or they fight over the cores."""
    if runs_per_gpu < 1:
        raise SpecError(f"runs_per_gpu must be >= 1, got {runs_per_gpu}")
    if not gpus:
        if cpu_slots is None:
            text = os.environ.get(CPU_SLOTS_ENV, "").strip() or "1"
            if not text.isdigit():
                raise SpecError(f"{CPU_SLOTS_ENV}={text!r}: expected a whole number of CPU runs at once")
            cpu_slots = int(text)
        if cpu_slots < 1:
            raise SpecError(f"CPU slots ({CPU_SLOTS_ENV} or --slots) must be >= 1, got {cpu_slots}")
        return [Slot() for _ in range(cpu_slots)]
    if per_run > len(gpus):
        raise SpecError(f"gpus_per_run = {per_run} but only {len(gpus)} GPU(s): {','.join(gpus)}")
    groups = [tuple(gpus[i:i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]
    return [Slot(group, share) for share in range(runs_per_gpu) for group in groups]


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
                 train_script: Path = TRAIN_SCRIPT, poll_s: float = 0.2, say=print, retries: int | None = None):
        self.spec, self.sweep, self.slots, self.progress = spec, sweep, slots, progress
        self.train_script, self.poll_s, self.say = Path(train_script), poll_s, say
        self.retries = spec.retries if retries is None else retries  # automatic retries of a failed run
        self.retried: dict[str, int] = {}  # run id -> retries made by this invocation
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
                    if self.finish(job, job.proc.returncode) == "failed" and self.retry(job):
                        queue.append(job.run)
                    self.say(self.progress.line(len(running), len(queue)))
        except KeyboardInterrupt:
            self.stop(running)
            return False
        return True

    def retry(self, job: Launched) -> bool:
        """Whether to run a failed run again now: up to `retries` times per invocation, never after a
        config or data error (exit code 2: the same run fails the same way)."""
        run_id, code = job.run.run_id, job.proc.returncode
        done = self.retried.get(run_id, 0)
        if code == EXIT_CONFIG or done >= self.retries or self.stopping:
            return False
        self.retried[run_id] = done + 1
        self.progress.failed -= 1
        self.say(f"retry  {run_id} ({done + 1} of {self.retries}; it continues from its last checkpoint)")
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
    atomic_write_text(
        sweep.failure_file(job.run.run_id),
        f"error: {error}\n"
        f"exit code: {code} ({meaning})\n"
        f"run: {job.run.run_id} on {job.slot}, after {format_duration(elapsed)}\n"
        f"when: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
        f"command: {shlex.join(job.command)}\n"
        f"full output: {sweep.log_file(job.run.run_id)}\n\n"
        f"--- last {len(tail)} lines of output ---\n" + "\n".join(tail) + "\n",
    )
    return error


def runs_to_do(runs: list[PlannedRun], statuses: dict, retry_failed: bool) -> list[PlannedRun]:
    """Pending runs, and failed ones when asked to retry them."""
    return [r for r in runs if statuses[r.run_id] == "pending" or (retry_failed and statuses[r.run_id] == "failed")]
