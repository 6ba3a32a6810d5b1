"""Signals: stopping cleanly on Ctrl-C / SIGTERM, and the SIGKILL fault injection of the restart tests."""

from __future__ import annotations

import contextlib
import os
import signal
import sys


class StopFlag:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step (it then writes a
    checkpoint); a second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsignal {signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
              f"(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def inject_fault(step: int, rank: int) -> None:
    """Fault injection for testing restarts: NANOGPT_FAULT_KILL_AT=RANK:STEP makes that rank
    SIGKILL itself after that step, in the first attempt of a torchrun job only."""
    spec = os.environ.get("NANOGPT_FAULT_KILL_AT")
    if spec and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        at_rank, at_step = map(int, spec.split(":"))
        if rank == at_rank and step == at_step:
            os.kill(os.getpid(), signal.SIGKILL)
