"""Atomic file writes, the one helper every writer uses (configs, summaries, checkpoints, shards,
manifests, CSV tables): the bytes go to a temporary file beside the target, are flushed to disk,
and the file is renamed over the target, so a crash leaves the old file or the new one, never a
partial one. Files get the usual permissions (the umask applies, as for any tool); the
temporaries of a killed write end in TMP_SUFFIX and `remove_stale_tmp` clears them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".partial.tmp"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(f) on a temporary binary file, then move it to `path` (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj) -> Path:
    """`obj` as strict JSON (common/strict_json.py: non-finite numbers as null, the reason beside them)."""
    from common.strict_json import dumps

    return atomic_write_text(path, dumps(obj, indent=2) + "\n")


def atomic_torch_save(path: str | Path, obj) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Delete the temporaries that killed writes left in `directory`; returns them."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".*{TMP_SUFFIX}")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
