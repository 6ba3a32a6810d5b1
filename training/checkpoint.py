"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is `<run_dir>/checkpoints/step_NNNNNN.pt` holding plain tensors and Python values
only, so it loads with torch.load(weights_only=True): model and optimizer state dicts, the data
loader position, RNG states, the completed step count and the running counters.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from common.atomic import atomic_torch_save
from common.errors import WriteError
from common.errors import CheckpointError

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int) -> Path:
    """Write step_NNNNNN.pt and delete all but the newest `keep` checkpoints of this run."""
    path = checkpoint_dir(run_dir) / f"step_{step:06d}.pt"
    try:
        atomic_torch_save(path, {**state, "step": step})
    except OSError as e:  # the temporary is gone (common/atomic.py); the older checkpoints are untouched
        previous = latest_checkpoint(run_dir)
        raise WriteError(f"could not write the checkpoint {path}: {e.strerror or e}; nothing was replaced, the "
                         f"previous checkpoint is {previous if previous else 'none (this was the first)'}"
                         + (f" (resume from it: --checkpoint.resume={run_dir})" if previous else "")) from e
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """This run's checkpoints, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


REQUIRED_KEYS = ("model", "optimizer", "loader", "rng", "counters", "step")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint at `path`; CheckpointError (naming the file) if it cannot be read or lacks a part."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, zeroed, not a torch file, unpickling refused: all mean "unusable"
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              f"it is probably truncated or corrupt") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a checkpoint of this trainer")
    return state
