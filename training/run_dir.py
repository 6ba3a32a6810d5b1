"""A run's directory: runs/<run_id>/ with config.toml, log.txt, metrics.jsonl, summary.json and
checkpoints/. A new run never reuses an existing directory; resuming continues the same one.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from common import strict_json
from common.atomic import atomic_write_json, atomic_write_text
from common.config_io import to_dict
from common.errors import ConfigError, WriteError
from training.config import Config

REPO = Path(__file__).resolve().parents[1]


class RunOutputs:
    """Writes the run's files on rank 0 (on other ranks every method does nothing). Nothing is
    written before `open()`: log lines until then are printed and kept, and go to log.txt first."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.dir = Path(run_dir)
        self.is_main = is_main
        self._pending: list[str] | None = []  # log lines printed before open()

    def open(self, resume_step: int | None = None) -> None:
        """Create the directory of a new run, or continue an existing one from `resume_step` (its
        metrics rows after that step are dropped: they are about to be done again)."""
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=resume_step is not None)
            if resume_step is not None:
                self._truncate_metrics(resume_step)
            with open(self.dir / "log.txt", "a") as f:
                f.writelines(line + "\n" for line in self._pending)
        self._pending = None

    def _truncate_metrics(self, step: int) -> None:
        """Keep the rows of steps before `step` (and of `step` itself unless it is 0, which a fresh
        start reports again), so that no step appears twice."""
        path = self.dir / "metrics.jsonl"
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["step"] < step or 0 < json.loads(line)["step"] == step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def log(self, message: str, echo: bool = True) -> None:
        """A line of log.txt, printed too (echo)."""
        if not self.is_main:
            return
        if echo:
            print(message, flush=True)
        if self._pending is not None:
            self._pending.append(message)
            return
        with open(self.dir / "log.txt", "a") as f:
            f.write(message + "\n")

    def write_config(self, toml_text: str) -> None:
        if self.is_main:
            atomic_write_text(self.dir / "config.toml", toml_text)

    def metrics(self, row: dict) -> None:
        """One strict-JSON line of metrics.jsonl; a write that fails partway (a full disk) is cut back off,
        so the file never ends in half a row."""
        if self.is_main:
            line = (strict_json.dumps(row) + "\n").encode()
            with open(self.dir / "metrics.jsonl", "ab") as f:
                start = f.tell()
                try:
                    f.write(line)
                    f.flush()
                except OSError as e:
                    with contextlib.suppress(OSError):
                        f.truncate(start)
                    raise WriteError(f"could not append step {row.get('step')}'s row to {f.name}: "
                                     f"{e.strerror or e}; the file ends at the previous row") from e

    def summary(self, summary: dict) -> None:
        if self.is_main:
            path = self.dir / "summary.json"
            try:
                atomic_write_json(path, summary)
            except OSError as e:  # atomic: the earlier summary (a resumed run's) is intact, never half a file
                raise WriteError(f"could not write {path}: {e.strerror or e}; the run ended '{summary.get('status')}'"
                                 f" at step {summary.get('steps')}"
                                 + (f" ({summary['error']})" if summary.get("error") else "")) from e


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
