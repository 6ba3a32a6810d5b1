"""How the benchmarks and the GPU check time training steps, in one place.

- `time_steps` / `summarize`: whole steps, each followed by a device synchronization (step time mean and
  median, tokens/s, model FLOPs utilization against the device's bf16 peak, peak memory).
- `time_phases`: the same steps phase by phase (forward+backward, optimizer) and the stalls on the
  gradient reductions and update gathers. On CUDA with CUDA events, never host clocks: an NCCL wait does
  not block the host (`work.wait()` only makes the compute stream wait for the NCCL stream), so a host
  timer around it reads ~0 whatever the overlap did. Every asynchronous collective of
  distributed/collectives.py is wrapped from the outside (nothing in the library changes) so that its
  work's wait() is bracketed by two events on the current stream: the first completes when the compute
  stream reaches the wait, the second when the collective is done too, so the time between them is how
  long the compute stream stood still for it (about 0 when the collective had already finished: fully
  hidden). On CPU (gloo) a wait blocks the host until the collective is done, so host clocks
  (time.perf_counter) measure the same thing there; the figures say which timer ("timer").
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from common.hardware import device_name, peak_memory_mib, peak_tflops, synchronize
from model import flops_per_token

TIMERS = {
    "cuda_events": "cuda_events: CUDA events on the compute stream (phases; each collective wait bracketed)",
    "host": "host: time.perf_counter (CPU/gloo, where a wait blocks the host until the collective is done)",
}

# distributed/collectives.py's asynchronous collectives, by what their waits count toward
WAIT_KINDS = {"all_reduce_average": "comm_wait", "reduce_scatter_average": "comm_wait", "all_gather": "gather_wait"}


def time_steps(trainer, at: int, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps at schedule position `at`, after `warmup` untimed ones."""
    for _ in range(warmup):
        trainer.step(at)
    synchronize(trainer.info.device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step(at)
        synchronize(trainer.info.device)
        times.append(time.perf_counter() - t0)
    return times


def summarize(trainer, times: list[float], window: int) -> dict:
    """The figures of the timed steps (all ranks together for tokens/s and TFLOP/s)."""
    cfg, info = trainer.cfg, trainer.info
    step_s = statistics.mean(times)
    fpt = flops_per_token(cfg.model, cfg.model.seq_len, window)
    achieved = fpt * cfg.data.batch_tokens / step_s / 1e12  # all ranks together
    peak = peak_tflops(info.device)
    return {
        "device": device_name(info.device, info.world_size),
        "world_size": info.world_size,
        "torch_version": torch.__version__,
        "compile": cfg.model.compile and info.device.type == "cuda",
        "attention": trainer.model.attention_kind(info.device),
        "timed_steps": len(times),
        "window": window,
        "grad_accum": trainer.accum,
        "tokens_per_step": cfg.data.batch_tokens,
        "step_ms_mean": 1000 * step_s,
        "step_ms_median": 1000 * statistics.median(times),
        "step_ms_min": 1000 * min(times),
        "tokens_per_s": cfg.data.batch_tokens / step_s,
        "model_flops_per_token": fpt,
        "achieved_tflops": achieved,
        "peak_tflops_per_device": peak,
        "mfu": achieved / (peak * info.world_size) if peak else None,
        "peak_memory_mib": peak_memory_mib(info.device),
    }


class Clock:
    """Marks on the device's timeline: CUDA events on the current stream, or (CPU) host clocks."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.label = "cuda_events" if self.cuda else "host"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        """Milliseconds between two marks (for events: call after they completed)."""
        return start.elapsed_time(end) if self.cuda else 1000 * (end - start)


class TimedWork:
    """A collective's work whose wait() is bracketed by two clock marks (appended to `log`)."""

    def __init__(self, work, kind: str, clock: Clock, log: list):
        self._work, self._kind, self._clock, self._log = work, kind, clock, log

    def wait(self, *args, **kwargs):
        start = self._clock.mark()
        done = self._work.wait(*args, **kwargs)
        self._log.append((self._kind, start, self._clock.mark()))
        return done

    def __getattr__(self, name):
        return getattr(self._work, name)


@contextlib.contextmanager
def timed_waits(clock: Clock):
    """While inside, every asynchronous collective of distributed/collectives.py returns a work whose
    wait is timed; yields the list that collects (kind, start mark, end mark) per wait."""
    from distributed import collectives

    log: list = []
    originals = {name: getattr(collectives, name) for name in WAIT_KINDS}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            work = fn(*args, **kwargs)
            return work if work is None else TimedWork(work, WAIT_KINDS[name], clock, log)
        return timed

    for name, fn in originals.items():
        setattr(collectives, name, wrap(name, fn))
    try:
        yield log
    finally:
        for name, fn in originals.items():
            setattr(collectives, name, fn)


def time_phases(trainer, at: int, warmup: int, steps: int) -> dict:
    """Mean milliseconds per step of forward+backward, the optimizer step, and the waits on the
    gradient reductions and update gathers, over `steps` steps at schedule position `at` after
    `warmup` untimed ones (module docstring: how)."""
    from common.hardware import synchronize

    clock = Clock(trainer.info.device)
    with timed_waits(clock) as waits:
        for _ in range(warmup):
            trainer.step(at)
        synchronize(trainer.info.device)
        waits.clear()
        marks = []
        for _ in range(steps):
            first = len(waits)
            m0 = clock.mark()
            trainer.forward_backward(at)
            m1 = clock.mark()
            trainer.optimizer_step(at)
            marks.append((m0, m1, clock.mark(), first, len(waits)))
        synchronize(trainer.info.device)
        rows = []
        for m0, m1, m2, lo, hi in marks:
            row = {"forward_backward_ms": clock.ms(m0, m1), "optimizer_ms": clock.ms(m1, m2),
                   "comm_wait_ms": 0.0, "gather_wait_ms": 0.0}
            for kind, start, end in waits[lo:hi]:
                row[f"{kind}_ms"] += clock.ms(start, end)
            rows.append(row)
    mean = {key: statistics.mean(r[key] for r in rows) for key in rows[0]}
    step = mean["forward_backward_ms"] + mean["optimizer_ms"]
    return {"timer": clock.label, "timed_steps": steps, "step_ms": step, **mean,
            "optimizer_fraction": mean["optimizer_ms"] / step}
