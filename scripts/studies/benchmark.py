"""Benchmark: which optimizer reaches a target validation loss in the fewest steps, each with its
learning rate tuned the same way. This is the optimization track of modded-nanogpt
(records/track_3_optimization: a fixed model, data and batch; the score is the length of a whole
schedule that ends at the target), scaled down.

    python -m scripts.studies.benchmark --spec configs/benchmarks/cpu_shakespeare.toml   # CPU, 2 runs at once
    python -m scripts.studies.benchmark --spec configs/benchmarks/track3_fineweb.toml    # every GPU of the node
    python -m scripts.studies.benchmark --spec SPEC --dry-run    # each phase's runs and their status; runs nothing
    python -m scripts.studies.benchmark --spec SPEC --record     # at the end, keep it in records/<track>/<date>_<name>/

The protocol (a spec, configs/benchmarks/*.toml, sets every number; cpu_shakespeare.toml documents
every key):

1. Search. For each optimizer: optim.lr = default x 2^k for each k of search.grid, at the largest
   budget, one seed (search.seed). The default, the grid's centre, is the spec's [default_lr] entry,
   else the base config's optim.lr if the base config trains that optimizer, else the optimizer's
   own (optimizers/registry.py: OPTIMIZERS[name].lr).
2. Refine once (search.refine): the best lr x 2^(-1/2) and x 2^(+1/2), the midpoints in log space.
   The best lr is the one with the lowest final validation loss; a diverged or failed run counts as
   the worst. If the best is the smallest or largest lr tried, the table says EDGE: widen search.grid
   (runs that finished are kept).
3. Ladder. The best lr at every budget (schedule.steps = budget: each run is a whole schedule of its
   own, its cooldown and warm-up fractions scaled with it, as track 3 scores whole schedules), every seed.
4. Target (spec key `target`): a loss, or "OPT@largest": the mean over seeds of OPT's final validation
   loss at the largest budget. "OPT@largest:max" takes its worst seed instead (then every seed of OPT
   reaches the target within the largest budget), "OPT@<budget>" another rung of the ladder.
5. Steps to target, per seed: the smallest budget whose final validation loss is <= the target; log(steps)
   is interpolated linearly in the final loss between that budget and the one below it (whose loss is
   above the target). Reached at the smallest budget: that budget, an upper bound (shown "<= N").
   Not reached at the largest budget: "> N", never a number. Per optimizer: the mean over seeds, the
   range (min-max), and the ratio of its mean to the reference optimizer's (spec key `reference`,
   default adamw). If a seed does not reach the target there is no mean: "> N (k of n seeds reach it)".

The runs go through the sweep machinery (scripts/sweeps/): each phase is a sweep over one folder,
<out>/<name>/ (default sweeps/<name>/), with the axes optim.name, schedule.steps, optim.lr and seed, so
that a run id names all four (name-muon_steps-200_lr-0.025_seed-0) and a run two phases share (the best
lr at the largest budget, seed 0) runs once. Running the command again resumes: finished runs are
skipped, half-done ones continue from their checkpoint, failed ones are retried (spec key `retries`;
--retry-failed for those whose retries were spent). Adding an optimizer to a spec runs only that
optimizer's runs; changing the base, overrides or an optimizer's extras is refused (new name, new
folder). Without GPUs, `slots` runs go at once (spec key or --slots); with more than one, each run
gets OMP_NUM_THREADS = cores / slots unless the variable is set.

Outputs in <out>/<name>/: the sweep's runs/, logs/ and failures/; spec.toml (a copy of the spec);
results.csv (every run, with its phase); benchmark.json (every number of the table); table.md (the
scores); loss_curves.png (validation loss against step of each optimizer's best lr at the largest
budget, every seed); lr_search.png (final loss against lr, one panel per optimizer). --record copies
the folder into records/<track>/<date>_<name>/ (scripts/records/ add-study) and regenerates
records/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.atomic import atomic_write_json, atomic_write_text
from common.errors import ConfigError
from common.exit_codes import EXIT_INTERRUPTED
from common.hardware import cpu_model
from common.paths import REPO
from optimizers.registry import OPTIMIZERS
from scripts.records import book as records
from scripts.studies.results import collect_results, plot_lr_transfer, write_csv
from scripts.studies.runner import (
    FINISHED,
    TRAIN_SCRIPT,
    Progress,
    Slot,
    SweepDir,
    Sweeper,
    interrupt_on_sigterm,
    make_slots,
    parse_gpus,
    runs_to_do,
)
from scripts.studies.spec import Axis, PlotSpec, SpecError, SweepSpec, check_spec, flatten, plan_runs, read_toml
from training.config import load_config, validate

SPEC_KEYS = ("name", "base", "optimizers", "budgets", "seeds", "target", "reference", "search", "default_lr",
             "overrides", "extra", "slots", "gpus_per_run", "retries", "track")
SEARCH_KEYS = ("grid", "refine", "seed")
TARGET = re.compile(r"^(?P<opt>[A-Za-z0-9_]+)@(?P<budget>largest|\d+)(:(?P<how>mean|max))?$")
PLOT = PlotSpec(x="optim.lr", curves="schedule.steps", panels="optim.name")


# ----------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    base: str  # the base config (relative to the repository root)
    optimizers: tuple[str, ...]
    budgets: tuple[int, ...]  # the ladder of schedule lengths, ascending
    seeds: tuple[int, ...]
    target: float | str  # a loss, or "OPT@largest[:mean|:max]" / "OPT@<budget>[...]"
    reference: str = "adamw"  # ratios are to this optimizer's mean steps (none if it is not benchmarked)
    grid: tuple[float, ...] = (-2, -1, 0, 1, 2)  # coarse search: default lr x 2^k
    refine: bool = True  # then best x 2^(+-1/2)
    search_seed: int = 0
    default_lr: dict = field(default_factory=dict)  # optimizer -> the grid's centre
    overrides: dict = field(default_factory=dict)  # dotted key -> value, for every run
    extra: dict = field(default_factory=dict)  # optimizer -> {dotted key: value} for its runs only
    slots: int = 1  # runs at once without GPUs
    gpus_per_run: int = 1
    retries: int = 1
    track: str = ""  # records/<track>/ for --record

    @property
    def base_path(self) -> Path:
        return Path(self.base) if Path(self.base).is_absolute() else REPO / self.base

    @property
    def largest(self) -> int:
        return self.budgets[-1]


def load_benchmark(path: str | Path) -> BenchmarkSpec:
    """Read and check a benchmark spec (TOML); errors name the key."""
    path = Path(path)
    raw = read_toml(path, SPEC_KEYS)
    for key in ("base", "optimizers", "budgets", "seeds", "target"):
        if key not in raw:
            raise SpecError(f"{path}: no `{key}`")
    search = raw.get("search", {})
    unknown = sorted(set(search) - set(SEARCH_KEYS))
    if unknown:
        raise SpecError(f"search: unknown key(s) {', '.join(unknown)} (valid: {', '.join(SEARCH_KEYS)})")
    seeds = tuple(_ints(raw["seeds"], "seeds"))
    bench = BenchmarkSpec(
        name=str(raw.get("name", path.stem)), base=str(raw["base"]), optimizers=tuple(raw["optimizers"]),
        budgets=tuple(sorted(_ints(raw["budgets"], "budgets"))), seeds=seeds, target=raw["target"],
        reference=str(raw.get("reference", "adamw")), grid=tuple(search.get("grid", BenchmarkSpec.grid)),
        refine=bool(search.get("refine", True)), search_seed=int(search.get("seed", seeds[0] if seeds else 0)),
        default_lr=dict(raw.get("default_lr", {})), overrides=flatten(raw.get("overrides", {})),
        extra={k: flatten(v) for k, v in raw.get("extra", {}).items()}, slots=int(raw.get("slots", 1)),
        gpus_per_run=int(raw.get("gpus_per_run", 1)), retries=int(raw.get("retries", 1)),
        track=str(raw.get("track", "")),
    )
    check_benchmark(bench, explicit_reference="reference" in raw)
    return bench


def _ints(values, key: str) -> list[int]:
    """A non-empty list of distinct whole numbers: positive (budgets) or non-negative (seeds)."""
    lowest = 0 if key == "seeds" else 1
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= lowest for v in values):
        raise SpecError(f"{key} = {values!r}: expected a non-empty list of whole numbers >= {lowest}")
    if len(set(values)) != len(values):
        raise SpecError(f"{key} = {values!r}: a value is listed twice")
    return values


def check_benchmark(bench: BenchmarkSpec, explicit_reference: bool = True) -> None:
    """What cannot work: unknown optimizers, a target that names no rung, an empty grid, ..."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", bench.name):
        raise SpecError(f"name = {bench.name!r}: use letters, digits, '_', '-' and '.' (it names a folder)")
    if not bench.optimizers or len(set(bench.optimizers)) != len(bench.optimizers):
        raise SpecError(f"optimizers = {list(bench.optimizers)}: expected a non-empty list without repeats")
    for key, names in (("optimizers", bench.optimizers), ("default_lr", bench.default_lr), ("extra", bench.extra)):
        bad = [n for n in names if n not in OPTIMIZERS]
        if bad:
            raise SpecError(f"{key}: unknown optimizer(s) {', '.join(bad)} (known: {', '.join(OPTIMIZERS)})")
    if any(not isinstance(v, (int, float)) or v <= 0 for v in bench.default_lr.values()):
        raise SpecError(f"default_lr = {bench.default_lr}: every learning rate must be a positive number")
    if not bench.grid or not all(isinstance(k, (int, float)) for k in bench.grid) or len(set(bench.grid)) != len(
            bench.grid):
        raise SpecError(f"search.grid = {list(bench.grid)}: expected exponents k (lr = default x 2^k), no repeats")
    if explicit_reference and bench.reference not in bench.optimizers:
        raise SpecError(f"reference = {bench.reference!r} is not one of the optimizers {list(bench.optimizers)}")
    if bench.slots < 1 or bench.gpus_per_run < 1 or bench.retries < 0:
        raise SpecError(f"slots ({bench.slots}) and gpus_per_run ({bench.gpus_per_run}) must be >= 1, "
                        f"retries ({bench.retries}) >= 0")
    parse_target(bench)


def parse_target(bench: BenchmarkSpec) -> tuple[str, int, str] | float:
    """A number, or (optimizer, budget, "mean" | "max") for a target read off the ladder."""
    target = bench.target
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        if target <= 0:
            raise SpecError(f"target = {target}: a validation loss must be positive")
        return float(target)
    match = TARGET.match(str(target))
    if not match:
        raise SpecError(f"target = {target!r}: expected a loss or 'OPT@largest' (':max' for the worst seed), "
                        "'OPT@<budget>'")
    budget = bench.largest if match["budget"] == "largest" else int(match["budget"])
    if match["opt"] not in bench.optimizers:
        raise SpecError(f"target = {target!r}: {match['opt']} is not one of the optimizers {list(bench.optimizers)}")
    if budget not in bench.budgets:
        raise SpecError(f"target = {target!r}: {budget} is not one of the budgets {list(bench.budgets)}")
    return match["opt"], budget, match["how"] or "mean"


def default_lr(bench: BenchmarkSpec, name: str) -> float:
    """The centre of an optimizer's grid: the spec's, the base config's (if it trains `name`), or the registry's."""
    if name in bench.default_lr:
        return float(bench.default_lr[name])
    base = load_config(bench.base_path)
    return float(base.optim.lr) if base.optim.name == name else float(OPTIMIZERS[name].lr)


def coarse_lrs(bench: BenchmarkSpec, name: str) -> tuple[float, ...]:
    centre = default_lr(bench, name)
    return tuple(centre * 2.0 ** k for k in sorted(bench.grid))


def refine_lrs(best: float) -> tuple[float, ...]:
    """The midpoints in log space between the best lr and its neighbours on a grid in factors of 2."""
    return (best * 2.0 ** -0.5, best * 2.0 ** 0.5)


def phase_spec(bench: BenchmarkSpec, lrs: dict, budgets, seeds) -> SweepSpec:
    """One phase as a sweep over the benchmark's folder: lrs = {optimizer: its learning rates}."""
    opts = [o for o in bench.optimizers if lrs.get(o)]
    axes = (Axis("optim.name", tuple(opts)), Axis("schedule.steps", tuple(budgets)),
            Axis("optim.lr", by="optim.name", per_value={o: tuple(lrs[o]) for o in opts}), Axis("seed", tuple(seeds)))
    spec = SweepSpec(name=bench.name, base=bench.base, axes=axes, overrides=bench.overrides,
                     extra={"optim.name": {o: bench.extra.get(o, {}) for o in opts}},
                     gpus_per_run=bench.gpus_per_run, retries=bench.retries, plot=PLOT)
    check_spec(spec)
    return spec


def check_configs(bench: BenchmarkSpec, world_size: int = 1) -> None:
    """Every optimizer's run config is one the trainer accepts (before any compute); ConfigError names the key."""
    for name in bench.optimizers:
        spec = phase_spec(bench, {name: (default_lr(bench, name),)}, (bench.largest,), (bench.search_seed,))
        for run in plan_runs(spec):
            validate(load_config(bench.base_path, list(run.overrides)), world_size=world_size)


# ----------------------------------------------------------------------------------------------
# Steps to target


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


# ----------------------------------------------------------------------------------------------
# Running the phases


@dataclass
class Context:
    bench: BenchmarkSpec
    sweep: SweepDir
    slots: list[Slot]
    train_script: Path = TRAIN_SCRIPT
    retry_failed: bool = False
    dry_run: bool = False
    say: object = print
    started: int = 0  # runs started by this invocation
    run_seconds: list = field(default_factory=list)  # their durations
    phases: dict = field(default_factory=dict)  # run id -> the phases that planned it


def run_phase(ctx: Context, spec: SweepSpec, label: str) -> list[dict]:
    """Run one phase's pending runs (none in a dry run) and return its rows (scripts/studies/results.py)."""
    runs = plan_runs(spec)
    for run in runs:
        ctx.phases.setdefault(run.run_id, []).append(label)
    statuses = {r.run_id: ctx.sweep.status(r.run_id) for r in runs}
    todo = runs_to_do(runs, statuses, ctx.retry_failed)
    ctx.say(f"{label}: {len(runs)} runs, {sum(s in FINISHED for s in statuses.values())} finished, {len(todo)} to run")
    if ctx.dry_run:
        for run in runs:
            ctx.say(f"  {statuses[run.run_id]:<10} {run.run_id}")
        return collect_results(spec, ctx.sweep, runs)
    ctx.sweep.check_same_recipe(spec)  # also when nothing is left to run: finished runs of another recipe
    if todo:
        progress = Progress(total=len(runs), done=len(runs) - len(todo), failed=0, slots=len(ctx.slots))
        sweeper = Sweeper(spec, ctx.sweep, ctx.slots, progress, ctx.train_script, say=ctx.say)
        if not sweeper.run_all(todo):
            raise KeyboardInterrupt
        ctx.started += len(todo)
        ctx.run_seconds += progress.durations
    return collect_results(spec, ctx.sweep, runs)


def row_loss(row: dict) -> float:
    """A run's final loss for ranking: inf when it diverged, failed or has not run."""
    loss = row.get("final_val_loss")
    return loss if row["status"] == "completed" and loss is not None and math.isfinite(loss) else math.inf


def search(ctx: Context) -> tuple[dict, list[dict]]:
    """Phases 1 and 2: {optimizer: {"default", "losses" {lr: loss}, "best", "edge", "complete"}} and the rows."""
    bench = ctx.bench
    coarse = {o: coarse_lrs(bench, o) for o in bench.optimizers}
    rows = run_phase(ctx, phase_spec(bench, coarse, (bench.largest,), (bench.search_seed,)), "search")
    refined = {}
    for opt in bench.optimizers:
        mine = [r for r in rows if r["optim.name"] == opt]
        losses = {r["optim.lr"]: row_loss(r) for r in mine}
        best = min(losses, key=losses.get)
        if bench.refine and math.isfinite(losses[best]) and all(r["status"] != "pending" for r in mine):
            refined[opt] = refine_lrs(best)
    if refined:
        rows += run_phase(ctx, phase_spec(bench, refined, (bench.largest,), (bench.search_seed,)), "refine")
    if len(refined) < len(bench.optimizers) and bench.refine and ctx.dry_run:
        ctx.say("refine: planned for each optimizer once its search has finished")
    result = {}
    for opt in bench.optimizers:
        mine = [r for r in rows if r["optim.name"] == opt]
        losses = dict(sorted((r["optim.lr"], row_loss(r)) for r in mine))
        best = min(losses, key=losses.get)
        finite = math.isfinite(losses[best])
        result[opt] = {"default": default_lr(bench, opt), "losses": losses, "best": best if finite else None,
                       "edge": finite and best in (min(losses), max(losses)),
                       "complete": all(r["status"] != "pending" for r in mine)}
    return result, rows


def ladder(ctx: Context, searched: dict) -> tuple[dict, list[dict]]:
    """Phase 3: {optimizer: {budget: {seed: final loss or None}}} at each optimizer's best lr, and the rows."""
    bench = ctx.bench
    lrs = {o: (s["best"],) for o, s in searched.items() if s["best"] is not None and s["complete"]}
    if ctx.dry_run and len(lrs) < len(searched):
        ctx.say(f"ladder: planned for each optimizer once its search has finished (now: {', '.join(lrs) or 'none'})")
    if not lrs:
        return {}, []
    rows = run_phase(ctx, phase_spec(bench, lrs, bench.budgets, bench.seeds), "ladder")
    losses = {o: {b: {} for b in bench.budgets} for o in lrs}
    for r in rows:
        if r["status"] in FINISHED:
            losses[r["optim.name"]][r["schedule.steps"]][r["seed"]] = row_loss(r)
    return losses, rows


# ----------------------------------------------------------------------------------------------
# The report: table.md, benchmark.json, results.csv, the figures


def _lr(x: float) -> str:
    return f"{x:.4g}"


def _loss(x) -> str:
    return "n/a" if x is None else ("diverged" if not math.isfinite(x) else f"{x:.4f}")


def steps_rows(bench: BenchmarkSpec, searched: dict, scores: dict) -> list[str]:
    """The main table: best lr, steps to target (mean, range, per seed), ratio to the reference."""
    lines = [f"| optimizer | best lr | steps to target (mean over seeds) | range (min-max) | per seed "
             f"| x {bench.reference} |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for opt in bench.optimizers:
        best = searched[opt]["best"]
        lr = "none trained" if best is None else _lr(best) + (" EDGE" if searched[opt]["edge"] else "")
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
                cells.append(", ".join(_loss(x) for x in xs) or "n/a")
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    return lines


def search_rows(bench: BenchmarkSpec, searched: dict) -> list[str]:
    lines = ["| optimizer | default lr | final validation loss per lr (best in bold) |", "| --- | ---: | --- |"]
    for opt, s in searched.items():
        cells = [(f"**{_lr(lr)}: {_loss(x)}**" if lr == s["best"] else f"{_lr(lr)}: {_loss(x)}")
                 for lr, x in s["losses"].items()]
        lines.append(f"| {opt} | {_lr(s['default'])} | {', '.join(cells)} |")
    return lines


def render_table(ctx: Context, searched: dict, losses: dict, scores: dict, target_text: str, machine: str) -> str:
    bench = ctx.bench
    grid = ", ".join(f"{k:+g}" for k in sorted(bench.grid))
    warnings = [f"**WARNING: {opt}'s best lr {_lr(s['best'])} is the "
                f"{'smallest' if s['best'] == min(s['losses']) else 'largest'} one tried: widen search.grid on that "
                "side.**" for opt, s in searched.items() if s["edge"]]
    warnings += [f"**WARNING: {opt}: every lr of the search diverged or failed.**"
                 for opt, s in searched.items() if s["best"] is None and s["complete"]]
    return "\n".join([
        f"# Benchmark {bench.name}: steps to the target validation loss", "",
        f"Base config `{bench.base}` with the overrides of `spec.toml`; budgets "
        f"{', '.join(map(str, bench.budgets))} steps, each a whole schedule; seeds {', '.join(map(str, bench.seeds))}.",
        f"Target: {target_text}.", f"Machine: {machine}.", "", *warnings, *([""] if warnings else []),
        "## Steps to target", "", *steps_rows(bench, searched, scores), "",
        "Per seed: the smallest budget whose final validation loss is <= the target, log(steps) interpolated "
        "linearly in the loss between it and the budget below it; '<= N': reached at the smallest budget; "
        "'> N': not reached at the largest. Mean and range (min-max) over the seeds; the last column is the "
        f"ratio of the mean to {bench.reference}'s. EDGE: the best lr is the end of the search grid.", "",
        "## Final validation loss at the best lr (mean ± sample std over seeds)", "", *ladder_rows(bench, losses), "",
        f"## Learning-rate search ({bench.largest} steps, seed {bench.search_seed})", "",
        f"Grid: default lr x 2^k, k = {grid}" + ("; then the best x 2^(+-1/2)." if bench.refine else "."), "",
        *search_rows(bench, searched), ""])


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


def plot_loss_curves(ctx: Context, searched: dict, rows: list[dict], target: float | None, out: Path) -> Path | None:
    """Validation loss against step of each optimizer's best lr at the largest budget, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = ctx.bench
    fig, ax = plt.subplots(figsize=(8.5, 5), constrained_layout=True)
    colors, styles, late = plt.get_cmap("tab10"), ["-", "--", ":", "-."], []
    for i, opt in enumerate(bench.optimizers):
        best = searched[opt]["best"]
        mine = [r for r in rows if (r["optim.name"], r["schedule.steps"], r["optim.lr"]) == (opt, bench.largest, best)
                and r["status"] in FINISHED]
        for j, r in enumerate(sorted({r["run_id"]: r for r in mine}.values(), key=lambda r: r["seed"])):
            points = [m for m in records.read_metrics(ctx.sweep.run_dir(r["run_id"])) if m.get("val_loss") is not None]
            points = [m for m in points if math.isfinite(m["val_loss"])]
            if not points:
                continue
            ax.plot([m["step"] for m in points], [m["val_loss"] for m in points], styles[j % 4], color=colors(i % 10),
                    lw=1.4, marker=".", ms=4, label=f"{opt} lr {_lr(best)}" if j == 0 else None)
            late += [m["val_loss"] for m in points if m["step"] >= bench.largest / 4]
    if not late:
        plt.close(fig)
        return None
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.4f}")
    lo, hi = min(late + ([target] if target else [])), max(late + ([target] if target else []))
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3))
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{bench.name}: validation loss at each optimizer's best lr, {bench.largest}-step schedule\n"
                 f"seeds {', '.join(map(str, bench.seeds))} (solid, dashed, dotted); "
                 f"y range from step {bench.largest // 4}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _finite_or_none(x):
    return x if x is not None and math.isfinite(x) else None


def machine_description(slots: list[Slot]) -> str:
    """Processor, cores and load at start (CPU), or the GPUs the runs used."""
    if any(s.gpus for s in slots):
        return f"{len(slots)} slot(s) of GPUs {', '.join(','.join(s.gpus) for s in slots)} (see the runs' summary.json)"
    model = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU {model or 'unknown'}, {os.cpu_count()} cores, {len(slots)} run(s) at once, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load:.1f} at the end")


def report(ctx: Context, searched: dict, losses: dict, rows: list[dict], wall_s: float) -> dict:
    """Write results.csv, benchmark.json, table.md and the figures; return benchmark.json's data."""
    bench, root = ctx.bench, ctx.sweep.root
    unique = {r["run_id"]: {**r, "phase": "+".join(ctx.phases.get(r["run_id"], []))} for r in rows}
    write_csv(list(unique.values()), ctx.sweep.results)
    try:
        target, target_text = resolve_target(bench, losses)
    except SpecError as e:
        ctx.say(f"no score yet: {e}")
        target, target_text = None, f"not known yet ({e})"
    scores = score(bench, losses, target) if target is not None else {}
    machine = machine_description(ctx.slots)
    atomic_write_text(root / "table.md", render_table(ctx, searched, losses, scores, target_text, machine))
    search_rows_ = [r for r in unique.values() if "search" in r["phase"] or "refine" in r["phase"]]
    plot_lr_transfer(search_rows_, PLOT, root / "lr_search.png", title=f"{bench.name}: lr search")
    plot_loss_curves(ctx, searched, list(unique.values()), target, root / "loss_curves.png")
    previous = json.loads((root / "benchmark.json").read_text()) if (root / "benchmark.json").is_file() else {}
    invocations = previous.get("invocations", []) + [{
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": round(wall_s, 1),
        "runs_started": ctx.started, "run_s_sum": round(sum(ctx.run_seconds), 1), "machine": machine}]
    data = {
        "name": bench.name, "base": bench.base, "budgets": list(bench.budgets), "seeds": list(bench.seeds),
        "target_spec": bench.target, "target": target, "target_text": target_text, "reference": bench.reference,
        "headline": headline(bench, scores, target) if scores else "no score yet",
        "search": {o: {"default": s["default"], "best": s["best"], "edge": s["edge"],
                       "losses": {repr(lr): _finite_or_none(x) for lr, x in s["losses"].items()}}
                   for o, s in searched.items()},
        "ladder": {o: {str(b): {str(seed): _finite_or_none(x) for seed, x in by.items()} for b, by in bb.items()}
                   for o, bb in losses.items()},
        "scores": {o: {"per_seed": {str(seed): {"steps": r.steps, "how": r.how} for seed, r in s["reaches"].items()},
                       **{k: s[k] for k in ("mean", "min", "max", "ratio", "reached")}} for o, s in scores.items()},
        "invocations": invocations,
    }
    atomic_write_json(root / "benchmark.json", data)
    return data


# ----------------------------------------------------------------------------------------------
# Command line


def prepare(args) -> Context:
    """The spec, the slots and the checked configs; raises SpecError / ConfigError before any compute."""
    bench = load_benchmark(args.spec)
    if args.slots is not None:
        bench = replace(bench, slots=args.slots)
    gpus = parse_gpus(args.gpus)
    if not gpus and bench.slots > (os.cpu_count() or 1):
        raise SpecError(f"slots = {bench.slots} runs at once, but this machine has {os.cpu_count()} cores")
    slots = make_slots(gpus, args.gpus_per_run or bench.gpus_per_run, cpu_slots=bench.slots)
    check_configs(bench, world_size=len(slots[0].gpus) or 1)
    if args.record and not bench.track:
        raise SpecError("--record needs `track` in the spec (records/<track>/)")
    if not gpus and len(slots) > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
    return Context(bench, SweepDir(args.out / bench.name), slots, args.train_script, args.retry_failed, args.dry_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="benchmark spec (configs/benchmarks/*.toml)")
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="parent of the benchmark folder (sweeps/)")
    parser.add_argument("--slots", type=int, help="runs at once without GPUs (default: the spec's slots)")
    parser.add_argument("--gpus", help="comma-separated GPU ids (default: all visible; 'none' for the CPU)")
    parser.add_argument("--gpus-per-run", type=int, help="GPUs per run (default: the spec's gpus_per_run)")
    parser.add_argument("--retry-failed", action="store_true", help="re-run runs whose failure was recorded")
    parser.add_argument("--dry-run", action="store_true", help="each phase's runs and their status; run nothing")
    parser.add_argument("--record", action="store_true", help="then copy it into records/<track>/<date>_<name>/")
    parser.add_argument("--records-root", type=Path, default=records.RECORDS, help=argparse.SUPPRESS)  # tests
    parser.add_argument("--train-script", type=Path, default=TRAIN_SCRIPT, help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    start = time.time()
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        ctx = prepare(args)
        searched, search_rows_ = search(ctx)
        losses, ladder_rows_ = ladder(ctx, searched)
    except (SpecError, ConfigError) as e:
        print(f"benchmark spec error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.dry_run:
        return 0
    shutil.copy2(args.spec, ctx.sweep.root / "spec.toml")
    data = report(ctx, searched, losses, search_rows_ + ladder_rows_, time.time() - start)
    print((ctx.sweep.root / "table.md").read_text())
    print(f"benchmark: {ctx.sweep.root} ({data['headline']})")
    if args.record:
        try:
            dest = records.add_study(ctx.sweep.root, ctx.bench.track, ctx.bench.name, "benchmark", args.records_root)
        except records.RecordError as e:
            print(f"record error: {e}", file=sys.stderr)
            return 2
        print(f"record: {dest}; table: {records.write_table(args.records_root)}")
    failed = [r for r in search_rows_ + ladder_rows_ if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
