"""What a run continues from: a new run directory, or a checkpoint of an earlier run, decided and
checked before anything is written.

    resume = ""        a new run: log.dir/<run_id> (log.run_id, or a fresh id) must not exist yet
    resume = "latest"  with log.run_id: that run's newest readable checkpoint, or a fresh start in that
                       directory if it has none (what a restarted torchrun job wants); without: the
                       newest run of the same config name under log.dir that has a checkpoint
    resume = PATH      a checkpoint file, or a run directory (its newest readable checkpoint)

Refused before anything is written (ConfigError or CheckpointError, exit code 2):
- a checkpoint that cannot be read. With "latest" or a run directory the previous readable
  checkpoint is taken instead, with a warning; a checkpoint file given by name is never replaced;
- a config that differs from the checkpoint's in anything that shapes the training (model shape,
  optimizer and its learning rates, schedule, data, seed): the message names every differing key.
  RESUMABLE_CHANGES lists what may change (where logs go, checkpoint cadence, evaluation, the
  process layout, compilation).
Resuming a run whose summary says it completed changes nothing (the plan carries that summary),
unless a checkpoint file before the end is named: that rewinds the run to it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from common.config_io import to_dict
from common.errors import CheckpointError, ConfigError
from training.checkpoint import list_checkpoints, load_checkpoint
from training.config import Config, load_config

# config keys (or prefixes ending in ".") that may differ between a checkpoint and the run resuming it
RESUMABLE_CHANGES = ("name", "device", "log.", "checkpoint.", "distributed.", "eval.", "model.compile",
                     "model.compile_warmup_steps", "model.attention", "data.micro_batch_size")


@dataclass
class ResumePlan:
    run_dir: Path
    checkpoint: Path | None = None  # the checkpoint to continue from
    state: dict | None = None  # that checkpoint, loaded (on the rank that planned)
    completed: dict | None = None  # the summary of a run that already completed: nothing to do
    notes: list[str] = field(default_factory=list)  # what was decided, for the log


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{name}_{uuid.uuid4().hex[:6]}"


def plan_run(cfg: Config) -> ResumePlan:
    """Where this run writes and what it continues from; raises before writing anything."""
    resume, parent = cfg.checkpoint.resume, Path(cfg.log.dir)
    if resume == "":
        run_dir = parent / (cfg.log.run_id or new_run_id(cfg.name))
        if run_dir.exists():
            raise ConfigError(f"run directory {run_dir} already exists: pass --checkpoint.resume=latest to continue "
                              f"it, or choose another --log.run_id")
        return ResumePlan(run_dir)
    path = Path(resume)
    if resume == "latest":
        plan = ResumePlan(parent / cfg.log.run_id) if cfg.log.run_id else _newest_run_of(parent, cfg.name)
    elif path.is_file():
        plan = ResumePlan(path.parent.parent, checkpoint=path)
    elif path.is_dir():
        plan = ResumePlan(path)
    else:
        raise ConfigError(f"checkpoint.resume: {path} is neither a checkpoint file nor a run directory")
    explicit_file = resume != "latest" and path.is_file()
    if not explicit_file:  # the newest checkpoint of a run that completed is its end: nothing to continue
        plan.completed = _completed_summary(plan.run_dir, cfg)
        if plan.completed is not None:
            return plan
    _load(plan, explicit_file=explicit_file, directory_given=resume != "latest" and path.is_dir())
    if plan.state is not None:
        _check_same_training(plan.state.get("config") or _run_config(plan.run_dir), cfg, plan.checkpoint)
        if plan.state["step"] >= cfg.schedule.steps:  # a named checkpoint at the end of the schedule
            plan.completed = _completed_summary(plan.run_dir, cfg)
    return plan


def _newest_run_of(parent: Path, name: str) -> ResumePlan:
    """The newest run (by its newest checkpoint) under `parent` whose config has this name."""
    runs = [d for d in parent.iterdir() if d.is_dir() and list_checkpoints(d) and _config_name(d) == name] \
        if parent.is_dir() else []
    if not runs:
        raise ConfigError(f"checkpoint.resume = 'latest': no run of config {name!r} with a checkpoint under {parent}/ "
                          f"(give --log.run_id to start or continue a named run)")
    run_dir = max(runs, key=lambda d: list_checkpoints(d)[-1].stat().st_mtime)
    return ResumePlan(run_dir, notes=[f"checkpoint.resume = 'latest': continuing {run_dir}, the newest run of "
                                      f"config {name!r} with a checkpoint"])


def _config_name(run_dir: Path) -> str | None:
    try:
        with open(run_dir / "config.toml", "rb") as f:
            return tomllib.load(f).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _load(plan: ResumePlan, explicit_file: bool, directory_given: bool) -> None:
    """Load the checkpoint to continue from: the named file, or the newest readable one of the run
    (falling back past unreadable ones with a warning). No checkpoint at all is a fresh start in the
    run directory with "latest" and an error for a run directory given by path."""
    if explicit_file:
        plan.state = load_checkpoint(plan.checkpoint)
        return
    candidates = list(reversed(list_checkpoints(plan.run_dir)))
    if not candidates:
        if directory_given:
            raise ConfigError(f"checkpoint.resume: {plan.run_dir} has no checkpoints/step_*.pt")
        plan.notes.append("checkpoint.resume = 'latest': no checkpoint yet, starting from step 0")
        return
    for path in candidates:
        try:
            plan.state, plan.checkpoint = load_checkpoint(path), path
            return
        except CheckpointError as e:
            plan.notes.append(f"warning: {e}; trying the previous checkpoint")
    raise CheckpointError(f"no readable checkpoint in {plan.run_dir / 'checkpoints'}: "
                          + "; ".join(n.removeprefix("warning: ") for n in plan.notes))


def _completed_summary(run_dir: Path, cfg: Config) -> dict | None:
    """The run's summary if it says the run completed (after checking the config is the same)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed":
        return None
    _check_same_training(_run_config(run_dir), cfg, run_dir / "config.toml")
    return summary


def _run_config(run_dir: Path) -> dict | None:
    """The config a run directory was made with (None if it has none we can read)."""
    try:
        return to_dict(load_config(run_dir / "config.toml"))
    except (ConfigError, OSError):
        return None


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def config_changes(before: dict, after: dict) -> list[str]:
    """The keys that differ between two configs (as to_dict gives them) and may not change on
    resume, as "key: old -> new". Keys present on one side only (a newer or older version of the
    config) are not compared."""
    old, new = _flatten(before), _flatten(after)
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys())
            if old[k] != new[k] and not any(k == c or (c.endswith(".") and k.startswith(c)) for c in RESUMABLE_CHANGES)]


def _check_same_training(before: dict | None, cfg: Config, source) -> None:
    if before is None:
        return
    changes = config_changes(before, to_dict(cfg))
    if changes:
        raise ConfigError(f"checkpoint.resume: {source} was made with a different config: {'; '.join(changes)}. "
                          f"A resumed run continues the same training; start a new run (without "
                          f"checkpoint.resume) to change these")
