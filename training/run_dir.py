"""A run's directory: runs/<run_id>/ with config.toml, log.txt, metrics.jsonl, summary.json and
checkpoints/. A new run never reuses an existing directory; resuming continues the same one.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

from training.atomic import atomic_write_json, atomic_write_text
from training.checkpoint import latest_checkpoint
from training.config import Config, ConfigError, to_dict

REPO = Path(__file__).resolve().parents[1]


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{name}_{uuid.uuid4().hex[:6]}"


def resolve_run(log_dir: str, run_id: str, resume: str, name: str) -> tuple[Path, Path | None]:
    """Decide where this run writes and which checkpoint (if any) it continues from.

    resume = ""        a new run; log.run_id (if given) must not exist yet
    resume = "latest"  with log.run_id: that run's newest checkpoint, or a fresh start there if it
                       has none (what a restarted torchrun job wants); without: the newest run
                       under log.dir that has a checkpoint
    resume = PATH      a checkpoint file, or a run directory (its newest checkpoint)
    """
    parent = Path(log_dir)
    if resume == "":
        run_dir = parent / (run_id or new_run_id(name))
        if run_dir.exists():
            raise ConfigError(
                f"run directory {run_dir} already exists: pass --checkpoint.resume=latest to continue it, "
                f"or choose another --log.run_id"
            )
        return run_dir, None
    if resume == "latest":
        if run_id:
            run_dir = parent / run_id
            return run_dir, latest_checkpoint(run_dir)
        candidates = [d for d in parent.iterdir() if d.is_dir() and latest_checkpoint(d)] if parent.is_dir() else []
        if not candidates:
            raise ConfigError(f"checkpoint.resume = 'latest': no run with a checkpoint under {parent}/")
        run_dir = max(candidates, key=lambda d: latest_checkpoint(d).stat().st_mtime)
        return run_dir, latest_checkpoint(run_dir)
    path = Path(resume)
    if path.is_file():
        return path.parent.parent, path
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"checkpoint.resume: {path} has no checkpoints/step_*.pt")
        return path, ckpt
    raise ConfigError(f"checkpoint.resume: {path} is neither a checkpoint file nor a run directory")


class RunOutputs:
    """Writes the run's files; on ranks other than 0 every method only prints nothing."""

    def __init__(self, run_dir: Path, is_main: bool, resume_step: int | None = None):
        self.dir = Path(run_dir)
        self.is_main = is_main
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=resume_step is not None)
        if resume_step is not None:
            self._truncate_metrics(resume_step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from, so no step appears twice."""
        path = self.dir / "metrics.jsonl"
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["step"] <= step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)
            with open(self.dir / "log.txt", "a") as f:
                f.write(message + "\n")

    def write_config(self, toml_text: str) -> None:
        if self.is_main:
            atomic_write_text(self.dir / "config.toml", toml_text)

    def metrics(self, row: dict) -> None:
        if self.is_main:
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def summary(self, summary: dict) -> None:
        if self.is_main:
            atomic_write_json(self.dir / "summary.json", summary)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def git_commit() -> str:
    """The repository's commit, or "unknown" (not a git checkout, git missing)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_wandb(cfg: Config, run_dir: Path):
    """A Weights & Biases run beside the run directory (log.wandb = true; rank 0 only)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("log.wandb = true needs the wandb package: pip install wandb "
                          "(set WANDB_MODE=offline to log without an account or network)") from None
    return wandb.init(project=cfg.log.wandb_project, name=run_dir.name, dir=str(run_dir), config=to_dict(cfg))
