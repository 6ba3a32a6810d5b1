"""Signals: what a run does when told something by a person or a scheduler, and the SIGKILL fault injection of
the restart tests.

    SIGINT (Ctrl-C), SIGTERM   checkpoint at the next step boundary and stop: status "interrupted", exit 130
                               (a second SIGINT aborts at once, without a new checkpoint)
    SIGUSR1                    checkpoint at the next step boundary and keep going: a scheduler's "checkpoint
                               now", e.g. SLURM's `#SBATCH --signal=USR1@120` two minutes before a preemption

With several processes the ranks agree at the next log or checkpoint step (log.every; a signal that reached
any rank counts for all), so that every rank writes its part of the same checkpoint and no step pays an extra
collective.""" 

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

SIGUSR1 = getattr(signal, "SIGUSR1", None)  # absent on Windows


class StopFlag:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step (it then writes a
    checkpoint); a second SIGINT interrupts at once. SIGUSR1 asks for a checkpoint and the run goes on
    (`checkpoint_requested`, cleared by the loop once written)."""

    def __init__(self):
        self.requested = False
        self.checkpoint_requested = False
        self._previous = {}

    def _handle(self, signum, _frame):
        if signum == SIGUSR1:
            self.checkpoint_requested = True
            print("\nsignal SIGUSR1: writing a checkpoint at the next step boundary and continuing",
                  file=sys.stderr, flush=True)
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsignal {signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
              f"(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, *([SIGUSR1] if SIGUSR1 else [])):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def inject_fault(step: int, rank: int) -> None:
    """Fault injection for tests: NANOGPT_FAULT_KILL_AT=RANK:STEP makes that rank SIGKILL itself after that
    step, in the first attempt of a torchrun job only; NANOGPT_FAULT_SIGNAL_AT=RANK:STEP:NAME[,...] (e.g.
    1:5:USR1) makes that rank send itself that signal after that step (as a scheduler would, to one process),
    or with NAME = HANG sleep for an hour (a rank stuck in a kernel or a driver)."""
    spec = os.environ.get("NANOGPT_FAULT_KILL_AT")
    if spec and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        at_rank, at_step = map(int, spec.split(":"))
        if rank == at_rank and step == at_step:
            os.kill(os.getpid(), signal.SIGKILL)
    for spec in filter(None, os.environ.get("NANOGPT_FAULT_SIGNAL_AT", "").split(",")):
        at_rank, at_step, name = spec.split(":")
        if rank == int(at_rank) and step == int(at_step):
            if name == "HANG":
                time.sleep(3600)
            else:
                os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
