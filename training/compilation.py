"""Compiling the model once: how many graphs a run needs, a recompile limit that fits them, and a
watch that counts compilations and eager fallbacks.

What a run compiles (model.compile, CUDA): either the whole model, or with overlapped gradient
reductions on several ranks each block on its own (training/trainer.py). The attention window is a
device tensor, so a growing window never recompiles; training and validation do: one set of graphs
for the training micro-batch (with gradients) and one for validation (no gradients, eval rows x the
eval sequence length, the accuracy as well). Dynamo keeps the graphs of one piece of code in one cache, and each block
instance needs its own entries, so the cache of Block.forward must hold depth x shapes graphs: past
torch's default limit of 8 the surplus would silently run eagerly. `configure` raises the limit to
what the run needs (with a margin); `CompileWatch` counts the graphs dynamo compiles and catches
its "hit config.recompile_limit" warning, which means a function fell back to eager mode: the
trainer logs both and warns loudly on a fallback.
"""

from __future__ import annotations

import logging

MARGIN = 4  # spare cache entries per code object beyond what the run needs


def graphs_needed(cfg, per_block: bool) -> int:
    """Cache entries the most shared piece of compiled code needs: (blocks sharing Block.forward, or
    the one model) x 2: training (with gradients) and validation (without, other shapes, accuracy)."""
    return (cfg.model.depth if per_block else 1) * 2


def configure(needed: int) -> int:
    """Raise dynamo's recompile limits to fit `needed` graphs per code object; returns the limit."""
    import torch._dynamo.config as dynamo_config

    limit = max(dynamo_config.recompile_limit, needed + MARGIN)
    dynamo_config.recompile_limit = limit
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * limit)
    return limit


class _FallbackCatcher(logging.Handler):
    def __init__(self, found: list):
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "recompile_limit" in message and "hit config" in message:
            self.found.append(message.splitlines()[0] + " " + " ".join(line.strip() for line in message.splitlines()[1:2]))


class CompileWatch:
    """Counts the graphs dynamo compiled and the eager fallbacks (recompile limit hit) since `start`."""

    LOGGER = "torch._dynamo.convert_frame"

    def __init__(self):
        self.fallbacks: list[str] = []
        self._handler = _FallbackCatcher(self.fallbacks)
        self._start = 0
        self._seen = 0
        self._breaks_at_start = 0

    @staticmethod
    def _graphs() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    @staticmethod
    def _breaks() -> int:
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))

    def start(self) -> CompileWatch:
        logging.getLogger(self.LOGGER).addHandler(self._handler)
        self._start = self._seen = self._graphs()
        self._breaks_at_start = self._breaks()
        return self

    @property
    def graph_breaks(self) -> int:
        """Graph breaks dynamo met since start (a compiled piece of code split in several graphs with eager
        Python between them)."""
        return self._breaks() - self._breaks_at_start

    def stop(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self._handler)

    @property
    def graphs(self) -> int:
        """Graphs compiled since start."""
        return self._graphs() - self._start

    def new_graphs(self) -> int:
        """Graphs compiled since the last call (recompiles, once the warm-up compiled everything)."""
        now = self._graphs()
        new, self._seen = now - self._seen, now
        return new
