"""The run meter: time, tokens and model FLOPs of the training steps (never of validation or
checkpoints), and the figures derived from them.

    train_time_ms  wall time of the training steps, summed over the whole run (resumes included)
    step_avg_ms    mean step time in this process, leaving out its first 10 steps (compilation,
                   warm-up) when it has run more than 20
    tokens/s       tokens of the steps since the last log line / their time
    mfu            model FLOPs utilization over the same steps as step_avg:
                       Σ tokens_s × flops_per_token(model, window of step s)
                       ───────────────────────────────────────────────────────
                       Σ time_s × (the device's dense bf16 peak) × (number of ranks)
                   with flops_per_token from model/gpt.py (matmuls and the attention that each
                   step's window actually allows). CUDA only, on devices with a known peak.

GPU work is asynchronous: a step's host time is only exact over intervals that end in a
synchronization, which the trainer does before every log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SKIPPED_STEPS = 10  # first steps of a process left out of step_avg and mfu (when it ran > 2x this)


@dataclass
class RunMeter:
    peak_flops: float | None = None  # all ranks together, FLOP/s; None: no MFU (CPU, unknown GPU)
    train_time_ms: float = 0.0
    tokens: int = 0
    _steps: list[tuple[float, float]] = field(default_factory=list)  # this process: (seconds, model FLOPs)
    _interval: list[float] = field(default_factory=lambda: [0.0, 0.0])  # since the last log line: seconds, tokens

    def add_step(self, seconds: float, tokens: int, flops: float) -> None:
        self.train_time_ms += 1000 * seconds
        self.tokens += tokens
        self._steps.append((seconds, flops))
        self._interval[0] += seconds
        self._interval[1] += tokens

    def _timed(self) -> list[tuple[float, float]]:
        steps = self._steps
        return steps[SKIPPED_STEPS:] if len(steps) > 2 * SKIPPED_STEPS else steps

    @property
    def step_avg_ms(self) -> float:
        timed = self._timed()
        return 1000 * sum(s for s, _ in timed) / len(timed) if timed else float("nan")

    @property
    def mfu(self) -> float | None:
        timed = self._timed()
        seconds = sum(s for s, _ in timed)
        if not self.peak_flops or not timed or seconds <= 0:
            return None
        return sum(f for _, f in timed) / seconds / self.peak_flops

    def interval_tokens_per_s(self) -> float:
        """Tokens per second since the last call (the log line's tok/s); starts a new interval."""
        seconds, tokens = self._interval
        self._interval = [0.0, 0.0]
        return tokens / max(seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_time_ms / 1000, 1e-9)

    def state_dict(self) -> dict:
        return {"train_time_ms": self.train_time_ms, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.train_time_ms, self.tokens = state["train_time_ms"], state["tokens"]
