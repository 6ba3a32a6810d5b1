"""The errors a user can fix, each a message that names what is wrong and how to fix it, and the one
"did you mean" helper of every such message. train_gpt.py maps them to exit code 2 (common/exit_codes.py)
and prints the message, never a traceback (the traceback goes to the run's log.txt)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending key."""


class DataError(ValueError):
    """The data cannot serve the run as configured; the message names the files and the numbers."""


class DataNotFoundError(FileNotFoundError):
    """No data files were found; the message says how to get them."""


class ShardError(ValueError):
    """A shard file is malformed; the message names the file and the problem."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


class WriteError(OSError):
    """A file of the run could not be written (a full disk, a quota, a vanished mount); the message names
    the file, the cause and what is still intact. train_gpt.py prints it without a traceback and exits 1
    (the run failed; nothing about the config is wrong)."""


# What train_gpt.py reports as a message with exit code 2, before or during a run.
USER_ERRORS = (ConfigError, DataError, DataNotFoundError, ShardError, CheckpointError)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word` (difflib's ratio >= 0.6), or None."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the choice closest to `word`, or "" when none is close."""
    close = closest(word, choices)
    return f"; did you mean {close!r}?" if close is not None else ""
