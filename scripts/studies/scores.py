"""Scores of a benchmark: when each seed's ladder of budgets reaches the target (steps to target), the
target itself when it names a rung of an optimizer's ladder, each optimizer's mean and range and its ratio
to the reference, and the table's rows. The protocol: scripts/studies/benchmark.py."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scripts.studies.benchmark_spec import BenchmarkSpec, parse_target
from scripts.studies.spec import SpecError


@dataclass(frozen=True)
class Reach:
    """When one seed's ladder reaches the target: steps (None: not within the largest budget) and
    how: "interpolated", "smallest" (reached at the smallest budget: an upper bound), "never"."""

    steps: float | None
    how: str

    def text(self, largest: int) -> str:
        if self.steps is None:
            return f"> {largest}"
        return f"<= {self.steps:.0f}" if self.how == "smallest" else f"{self.steps:.0f}"


def steps_to_target(losses: dict, target: float) -> Reach:
    """losses = {budget: final validation loss of the run of that length} (inf or None: diverged or
    missing). The smallest budget b whose loss is <= target; with the budget a below it (loss above
    the target), log(steps) = log a + (L_a - target) / (L_a - L_b) x (log b - log a)."""
    budgets = sorted(losses)
    for i, b in enumerate(budgets):
        loss_b = losses[b]
        if loss_b is None or not math.isfinite(loss_b) or loss_b > target:
            continue
        if i == 0:
            return Reach(float(b), "smallest")
        a, loss_a = budgets[i - 1], losses[budgets[i - 1]]
        if loss_a is None or not math.isfinite(loss_a):  # the shorter run diverged: no line to follow
            return Reach(float(b), "interpolated")
        frac = (loss_a - target) / (loss_a - loss_b)
        return Reach(a * (b / a) ** frac, "interpolated")  # exp(log a + frac (log b - log a))
    return Reach(None, "never")


def resolve_target(bench: BenchmarkSpec, ladder: dict) -> tuple[float, str]:
    """The target loss and how it was found; ladder = {optimizer: {budget: {seed: loss}}}."""
    parsed = parse_target(bench)
    if isinstance(parsed, float):
        return parsed, f"{parsed:g} (set in the spec)"
    opt, budget, how = parsed
    losses = list(ladder.get(opt, {}).get(budget, {}).values())
    if len(losses) < len(bench.seeds) or not all(x is not None and math.isfinite(x) for x in losses):
        raise SpecError(f"target = {bench.target!r}: {opt} has no finite final loss at {budget} steps for every seed "
                        f"({losses}); set a number instead")
    value = max(losses) if how == "max" else statistics.fmean(losses)
    which = "the worst" if how == "max" else "the mean"
    return value, f"{value:.4f} = {bench.target} ({which} of {opt}'s {len(losses)} seeds at {budget} steps)"


def score(bench: BenchmarkSpec, ladder: dict, target: float) -> dict:
    """Per optimizer: each seed's Reach, and the mean, min and max steps when every seed reaches."""
    scores = {}
    for opt, by_budget in ladder.items():
        reaches = {s: steps_to_target({b: by_budget.get(b, {}).get(s) for b in bench.budgets}, target)
                   for s in bench.seeds}
        steps = [r.steps for r in reaches.values()]
        done = all(x is not None for x in steps)
        scores[opt] = {"reaches": reaches, "mean": statistics.fmean(steps) if done else None,
                       "min": min(steps) if done else None, "max": max(steps) if done else None,
                       "reached": sum(x is not None for x in steps)}
    ref = scores.get(bench.reference, {}).get("mean")
    for s in scores.values():
        s["ratio"] = s["mean"] / ref if s["mean"] is not None and ref else None
    return scores


def lr_text(x: float) -> str:
    return f"{x:.4g}"


def loss_text(x) -> str:
    return "n/a" if x is None else ("diverged" if not math.isfinite(x) else f"{x:.4f}")


def steps_rows(bench: BenchmarkSpec, searched: dict, scores: dict) -> list[str]:
    """The main table: best lr, steps to target (mean, range, per seed), ratio to the reference."""
    lines = [f"| optimizer | best lr | steps to target (mean over seeds) | range (min-max) | per seed "
             f"| x {bench.reference} |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for opt in bench.optimizers:
        best = searched[opt]["best"]
        lr = "none trained" if best is None else lr_text(best) + (" EDGE" if searched[opt]["edge"] else "")
        s = scores.get(opt)
        if s is None:
            lines.append(f"| {opt} | {lr} | n/a | n/a | n/a | n/a |")
            continue
        if s["mean"] is not None:
            mean, spread = f"{s['mean']:.0f}", f"{s['min']:.0f}-{s['max']:.0f}"
            if all(r.how == "smallest" for r in s["reaches"].values()):
                mean = f"<= {s['mean']:.0f}"
        else:
            mean, spread = f"> {bench.largest} ({s['reached']} of {len(bench.seeds)} seeds reach it)", "n/a"
        seeds = ", ".join(r.text(bench.largest) for r in s["reaches"].values())
        ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}"
        lines.append(f"| {opt} | {lr} | {mean} | {spread} | {seeds} | {ratio} |")
    return lines


def ladder_rows(bench: BenchmarkSpec, losses: dict) -> list[str]:
    lines = ["| optimizer | " + " | ".join(f"{b} steps" for b in bench.budgets) + " |",
             "| --- | " + " | ".join("---:" for _ in bench.budgets) + " |"]
    for opt, by_budget in losses.items():
        cells = []
        for b in bench.budgets:
            xs = list(by_budget.get(b, {}).values())
            finite = [x for x in xs if x is not None and math.isfinite(x)]
            if len(finite) == len(xs) and len(xs) > 1:
                cells.append(f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs):.4f}")
            else:
                cells.append(", ".join(loss_text(x) for x in xs) or "n/a")
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    return lines


def search_rows(bench: BenchmarkSpec, searched: dict) -> list[str]:
    lines = ["| optimizer | default lr | final validation loss per lr (best in bold) |", "| --- | ---: | --- |"]
    for opt, s in searched.items():
        cells = [(f"**{lr_text(lr)}: {loss_text(x)}**" if lr == s["best"] else f"{lr_text(lr)}: {loss_text(x)}")
                 for lr, x in s["losses"].items()]
        lines.append(f"| {opt} | {lr_text(s['default'])} | {', '.join(cells)} |")
    return lines


def headline(bench: BenchmarkSpec, scores: dict, target: float) -> str:
    parts = []
    for opt, s in scores.items():
        if s["mean"] is None:
            parts.append(f"{opt} > {bench.largest}")
        else:
            shown = s["ratio"] is not None and opt != bench.reference
            ratio = f" ({s['ratio']:.2f}x {bench.reference})" if shown else ""
            parts.append(f"{opt} {s['mean']:.0f}{ratio}")
    return f"steps to val loss {target:.4f} ({bench.target}): " + ", ".join(parts)
