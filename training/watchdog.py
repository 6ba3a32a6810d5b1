"""The watchdog: when one process of a multi-process run cannot go on, every other one still ends, within a
stated time, with a summary that says failed.

A rank blocked in a collective whose peer died or hangs never returns to Python, so neither a signal handler
(Python runs them between bytecodes of the main thread) nor an exception reaches the training loop:

  - torchrun, seeing a worker die, sends SIGTERM to the others and SIGKILL 30 s later (SLURM's KillWait is
    30 s too); a rank stuck in the collective is killed without its summary;
  - on NCCL the wait ends when NCCL's own watchdog tears the process down at the collective timeout
    (TORCH_NCCL_ASYNC_ERROR_HANDLING=3, torch's default), again without a summary.

This thread runs in every process of a run with several processes. The loop calls tick() at each step, each
validation batch and each checkpoint, and the thread ends the process (summary.json on rank 0 with status
"failed" and the reason, exit 4 as for any failed collective) when

  - a SIGTERM or SIGINT arrived and then no progress came for `distributed.stop_grace_s` (default 20 s, inside
    the 30 s that torchrun and SLURM wait before SIGKILL);
  - on NCCL, no progress came for `distributed.timeout_s` (the collective timeout given to NCCL is 60 s
    longer, so that this comes first, with a summary; gloo's own timeout raises an error in the loop, which
    then writes the summary itself).

It hears of a signal through `signal.set_wakeup_fd`: the interpreter's C-level handler writes the signal's
number to a pipe at once, even while the main thread is blocked. A rank that is busy, not blocked (rank 0
writing a checkpoint), holds `busy()` and is not ended for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from typing import Callable

from common.exit_codes import EXIT_COLLECTIVE

NCCL_TIMEOUT_MARGIN_S = 60.0  # NCCL's collective timeout is distributed.timeout_s + this


class Watchdog:
    def __init__(self, rank: int, stall_s: float | None, grace_s: float, on_fire: Callable[[str], None],
                 poll_s: float = 0.2, exit: Callable[[int], None] = os._exit):
        """on_fire(reason): write what the run must leave behind (the summary); then exit(4). stall_s: None
        where the backend's own timeout raises an error in the loop (gloo)."""
        self.rank, self.stall_s, self.grace_s, self.on_fire = rank, stall_s, grace_s, on_fire
        self.poll_s, self.exit = poll_s, exit
        self._last = time.monotonic()
        self._busy = 0
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    def tick(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def busy(self):
        """Work that can take long but cannot block on a peer (writing a checkpoint)."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self.tick()

    def __enter__(self):
        self._pipe = os.pipe()
        for fd in self._pipe:
            os.set_blocking(fd, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        except ValueError:  # not the main thread: no signals to hear
            self._previous_fd = None
        self.tick()
        self._thread = threading.Thread(target=self._watch, name="nanogpt-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        with self._lock:  # once the loop is out, the watchdog never fires (the loop writes the summary)
            self._done.set()
        self._thread.join()
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        for fd in self._pipe:
            os.close(fd)
        return False

    def _watch(self) -> None:
        signalled_at, signal_name = None, ""
        while not self._done.is_set():
            ready, _, _ = select.select([self._pipe[0]], [], [], self.poll_s)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    for signum in os.read(self._pipe[0], 256):
                        if signalled_at is None and signum in (signal.SIGTERM, signal.SIGINT):
                            signalled_at, signal_name = time.monotonic(), signal.Signals(signum).name
            if self._busy:
                continue
            now = time.monotonic()
            quiet = now - self._last
            if signalled_at is not None and now - max(self._last, signalled_at) > self.grace_s:
                self._fire(f"{signal_name} received and no step boundary within distributed.stop_grace_s = "
                           f"{self.grace_s:g} s: blocked in a collective whose peer died or hangs")
            elif self.stall_s is not None and quiet > self.stall_s:
                self._fire(f"no progress for distributed.timeout_s = {self.stall_s:g} s: blocked in a collective "
                           f"whose peer died or hangs")

    def _fire(self, reason: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            print(f"\nerror on rank {self.rank}: {reason}; ending this process (exit {EXIT_COLLECTIVE})",
                  file=sys.stderr, flush=True)
            try:
                self.on_fire(reason)
            except BaseException as e:  # noqa: BLE001 - the exit below must happen whatever the summary does
                print(f"error on rank {self.rank}: could not write the summary: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)
            sys.stderr.flush()
            self._done.set()
            self.exit(EXIT_COLLECTIVE)


class NoWatchdog:
    """One process: nothing to wait on."""

    def tick(self) -> None:
        pass

    @contextlib.contextmanager
    def busy(self):
        yield

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
