"""Benchmark: which optimizer reaches a target validation loss in the fewest steps, each with its
learning rate tuned the same way. This is the optimization track of modded-nanogpt
(records/track_3_optimization: a fixed model, data and batch; the score is the length of a whole
schedule that ends at the target), scaled down.

    python -m scripts.studies.benchmark --spec configs/benchmarks/cpu_shakespeare.toml   # CPU, 2 runs at once
    python -m scripts.studies.benchmark --spec configs/benchmarks/track3_fineweb.toml    # every GPU of the node
    python -m scripts.studies.benchmark --spec SPEC --dry-run    # each phase's runs and their status; runs nothing
    python -m scripts.studies.benchmark --spec SPEC --record     # at the end, keep it in records/<track>/<date>_<name>/
    python -m scripts.studies.benchmark --spec SPEC --data DIR --lrs-from sweeps/NAME/benchmark.json
                                 # the same protocol on your text (data/shakespeare.py --text FILE --out DIR) with the
                                 # lrs searched before, as given: does the ranking hold on text it was not tuned on?

The protocol (a spec, configs/benchmarks/*.toml, sets every number; cpu_shakespeare.toml documents
every key):

1. Search. For each optimizer: optim.lr = default x 2^k for each k of search.grid, at the largest
   budget, on each seed of search.seeds (default: the first seed), each lr scored by the mean of its seeds'
   final validation losses. The default, the grid's centre, is the spec's [default_lr] entry,
   else the base config's optim.lr if the base config trains that optimizer, else the optimizer's
   own (optimizers/registry.py: OPTIMIZERS[name].lr).
2. Refine once (search.refine): the best lr x 2^(-1/2) and x 2^(+1/2), the midpoints in log space.
   The best lr is the one with the lowest final validation loss; a diverged or failed run counts as
   the worst. If the best is the smallest or largest lr tried, the table says EDGE: widen search.grid
   (runs that finished are kept). If the losses do not fall toward the best lr and rise past it by more
   than their noise across seeds (one seed: any reversal), the table says NON-MONOTONE: the best lr may
   be noise. With one lr (search.grid = [0], refine = false) the lr is given, not searched.
   search.refine = "beyond_noise" refines only where it can matter: where the parabola through the best lr
   and its neighbours allows a midpoint to beat the best by more than the search's noise (two or more
   search seeds; scores.refine_worth), so runs are not spent on differences the search cannot see.
3. Ladder. The best lr at every budget (schedule.steps = budget: each run is a whole schedule of its
   own, its cooldown and warm-up fractions scaled with it, as track 3 scores whole schedules), every seed.
4. Target (spec key `target`): a loss, or "OPT@largest": the mean over seeds of OPT's final validation
   loss at the largest budget. "OPT@largest:max" takes its worst seed instead (then every seed of OPT
   reaches the target within the largest budget), "OPT@<budget>" another rung of the ladder.
5. Steps to target, per seed: the smallest budget whose final validation loss is <= the target; log(steps)
   is interpolated linearly in the final loss between that budget and the one below it (whose loss is
   above the target). Reached at the smallest budget: that budget, an upper bound (shown "<= N").
   Not reached at the largest budget: "> N", never a number. Per optimizer: the mean over seeds, the
   range (min-max), a Student t interval of the mean, the ratio of its mean to the reference optimizer's
   (spec key `reference`, default adamw) and Welch's t-test of its seeds' steps against the reference's;
   the headline gives a ratio only where p < alpha (spec key, default 0.05). If a seed does not reach the
   target there is no mean: "> N (k of n seeds reach it)".

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
from scripts.records import book as records
from scripts.studies.benchmark_spec import (
    BenchmarkSpec,
    check_configs,
    coarse_lrs,
    default_lr,
    load_benchmark,
    phase_spec,
    plan_summary,
    plot_spec,
    refine_lrs,
    retarget,
)
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
from scripts.studies.scores import (
    headline,
    ladder_rows,
    lr_text,
    non_monotone,
    refine_text,
    refine_worth,
    resolve_target,
    score,
    score_json,
    search_rows,
    steps_rows,
)
from scripts.studies.spec import SpecError, SweepSpec, plan_runs


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


def lr_losses(rows: list[dict], opt: str, key: str) -> dict:
    """{lr (the value of `key`): [final loss of each finished or failed search seed]} of one optimizer's rows."""
    per_lr = {}
    for r in rows:
        if r["optim.name"] == opt and r["status"] != "pending":
            per_lr.setdefault(r[key], []).append(row_loss(r))
    return per_lr


def search(ctx: Context) -> tuple[dict, list[dict]]:
    """Phases 1 and 2: {optimizer: {"default", "losses" {lr: mean loss over the search seeds}, "best", "edge",
    "non_monotone", "complete"}} and the rows."""
    bench = ctx.bench
    coarse = {o: coarse_lrs(bench, o) for o in bench.optimizers}
    rows = run_phase(ctx, phase_spec(bench, coarse, (bench.largest,), bench.search_seeds), "search")

    def mean_losses(opt):
        per_lr = lr_losses(rows, opt, bench.search_key)
        return per_lr, {lr: statistics.fmean(xs) for lr, xs in sorted(per_lr.items())}

    refined, skipped = {}, {}
    for opt in bench.optimizers:
        per_lr, losses = mean_losses(opt)
        pending = any(r["status"] == "pending" for r in rows if r["optim.name"] == opt)
        best = min(losses, key=losses.get) if losses else None
        if bench.refine and best is not None and math.isfinite(losses[best]) and not pending:
            worth, why = refine_worth(per_lr) if bench.refine == "beyond_noise" else (True, "")
            if worth:
                refined[opt] = refine_lrs(best)
            else:
                skipped[opt] = why
                ctx.say(f"refine: not for {opt}: {why}")
    if refined:
        rows += run_phase(ctx, phase_spec(bench, refined, (bench.largest,), bench.search_seeds), "refine")
    if len(refined) < len(bench.optimizers) and bench.refine and ctx.dry_run:
        ctx.say("refine: planned for each optimizer once its search has finished")
    result = {}
    for opt in bench.optimizers:
        per_lr, losses = mean_losses(opt)
        losses = losses or {lr: math.inf for lr in coarse[opt]}
        best = min(losses, key=losses.get)
        finite = math.isfinite(losses[best])
        default = 1.0 if bench.search_roles == "all" else default_lr(bench, opt)
        result[opt] = {"default": default, "losses": losses, "best": best if finite else None,
                       "edge": finite and len(losses) > 1 and best in (min(losses), max(losses)),
                       "non_monotone": non_monotone(per_lr) if finite else None, "refine_skipped": skipped.get(opt),
                       "complete": all(r["status"] != "pending" for r in rows if r["optim.name"] == opt)}
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


def render_table(ctx: Context, searched: dict, losses: dict, scores: dict, target_text: str, machine: str) -> str:
    bench = ctx.bench
    grid = ", ".join(f"{k:+g}" for k in sorted(bench.grid))
    warnings = [f"**WARNING: {opt}'s best lr {lr_text(s['best'])} is the "
                f"{'smallest' if s['best'] == min(s['losses']) else 'largest'} one tried: widen search.grid on that "
                "side.**" for opt, s in searched.items() if s["edge"]]
    warnings += [f"**WARNING: {opt}: every lr of the search diverged or failed.**"
                 for opt, s in searched.items() if s["best"] is None and s["complete"]]
    warnings += [f"**WARNING: {opt}'s search is not monotone: {s['non_monotone']}; its best lr may be noise "
                 "(more search.seeds).**" for opt, s in searched.items() if s.get("non_monotone")]
    return "\n".join([
        f"# Benchmark {bench.name}: steps to the target validation loss", "",
        f"Base config `{bench.base}` with the overrides of `spec.toml`; budgets "
        f"{', '.join(map(str, bench.budgets))} steps, each a whole schedule; seeds {', '.join(map(str, bench.seeds))}.",
        f"Target: {target_text}.", f"Machine: {machine}.", "", *warnings, *([""] if warnings else []),
        "## Steps to target", "", *steps_rows(bench, searched, scores), "",
        "Per seed: the smallest budget whose final validation loss is <= the target, log(steps) interpolated "
        "linearly in the loss between it and the budget below it; '<= N': reached at the smallest budget; "
        "'> N': not reached at the largest. Mean and range (min-max) over the seeds; then the ratio of the mean "
        f"to {bench.reference}'s (delta-method interval). Interval: Student t over the seeds' steps; p: Welch's "
        f"two-sided t-test against {bench.reference}'s seeds (* below {bench.alpha:g}; scripts/studies/scores.py). "
        "EDGE: the best lr is the end of the search grid; (given): one lr, not searched; NON-MONOTONE: the "
        "search's losses reverse beyond their noise.", "",
        "## Final validation loss at the best lr (mean ± sample std over seeds)", "", *ladder_rows(bench, losses), "",
        f"## Learning-rate search ({bench.largest} steps, seed{'s' if len(bench.search_seeds) > 1 else ''} "
        f"{', '.join(map(str, bench.search_seeds))})", "",
        (f"Grid: default lr x 2^k, k = {grid}" if bench.search_roles == "main" else
         f"Grid: every role's lr (optim.lr and each role's own) x lr scale 2^k, k = {grid}")
        + refine_text(bench, searched), "",
        *search_rows(bench, searched), ""])


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
        key = (opt, bench.largest, best)
        mine = [r for r in rows if (r["optim.name"], r["schedule.steps"], r[bench.search_key]) == key
                and r["status"] in FINISHED]
        for j, r in enumerate(sorted({r["run_id"]: r for r in mine}.values(), key=lambda r: r["seed"])):
            points = [m for m in records.read_metrics(ctx.sweep.run_dir(r["run_id"])) if m.get("val_loss") is not None]
            points = [m for m in points if math.isfinite(m["val_loss"])]
            if not points:
                continue
            ax.plot([m["step"] for m in points], [m["val_loss"] for m in points], styles[j % 4], color=colors(i % 10),
                    lw=1.4, marker=".", ms=4, label=f"{opt} lr {lr_text(best)}" if j == 0 else None)
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
    plot_lr_transfer(search_rows_, plot_spec(bench), root / "lr_search.png", title=f"{bench.name}: lr search")
    plot_loss_curves(ctx, searched, list(unique.values()), target, root / "loss_curves.png")
    previous = json.loads((root / "benchmark.json").read_text()) if (root / "benchmark.json").is_file() else {}
    invocations = previous.get("invocations", []) + [{
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": round(wall_s, 1),
        "runs_started": ctx.started, "run_s_sum": round(sum(ctx.run_seconds), 1), "machine": machine}]
    data = {
        "name": bench.name, "base": bench.base, "budgets": list(bench.budgets), "seeds": list(bench.seeds),
        "target_spec": bench.target, "target": target, "target_text": target_text, "reference": bench.reference,
        "headline": headline(bench, scores, target) if scores else "no score yet",
        "alpha": bench.alpha, "search_seeds": list(bench.search_seeds), "search_key": bench.search_key,
        "train_files": bench.overrides.get("data.train_files"), "lrs_given": len(bench.grid) == 1 and not bench.refine,
        "search": {o: {"default": s["default"], "best": s["best"], "edge": s["edge"],
                       "non_monotone": s["non_monotone"], "refine_skipped": s.get("refine_skipped"),
                       "losses": {repr(lr): _finite_or_none(x) for lr, x in s["losses"].items()}}
                   for o, s in searched.items()},
        "ladder": {o: {str(b): {str(seed): _finite_or_none(x) for seed, x in by.items()} for b, by in bb.items()}
                   for o, bb in losses.items()},
        "scores": {o: score_json(s) for o, s in scores.items()},
        "invocations": invocations,
    }
    atomic_write_json(root / "benchmark.json", data)
    return data


def prepare(args) -> Context:
    """The spec, the slots and the checked configs; raises SpecError / ConfigError before any compute."""
    bench = load_benchmark(args.spec)
    if args.data or args.lrs_from or args.target:
        bench = retarget(bench, args.data, args.lrs_from, args.target)
    if args.slots is not None:
        bench = replace(bench, slots=args.slots)
    gpus = parse_gpus(args.gpus)
    if not gpus and bench.slots > (os.cpu_count() or 1):
        raise SpecError(f"slots = {bench.slots} runs at once, but this machine has {os.cpu_count()} cores")
    slots = make_slots(gpus, args.gpus_per_run or bench.gpus_per_run, cpu_slots=bench.slots,
                       runs_per_gpu=args.runs_per_gpu or bench.runs_per_gpu)
    check_configs(bench, world_size=len(slots[0].gpus) or 1)
    if args.record and not bench.track:
        raise SpecError("--record needs `track` in the spec (records/<track>/)")
    if len(slots) > 1 and "OMP_NUM_THREADS" not in os.environ:  # CPU runs, or the host side of packed GPU runs
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
    folder = SweepDir(args.out / (args.name or bench.name))
    return Context(bench, folder, slots, args.train_script, args.retry_failed, args.dry_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="benchmark spec (configs/benchmarks/*.toml)")
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="parent of the benchmark folder (sweeps/)")
    parser.add_argument("--data", type=Path, help="shards of another text (data/shakespeare.py --text FILE --out DIR)")
    parser.add_argument("--target", help="a loss or OPT@largest[:max] (--data: the reference's worst seed)")
    parser.add_argument("--lrs-from", type=Path, help="train the best lrs of this benchmark.json as given, no search")
    parser.add_argument("--name", help="the folder's name, e.g. a kept record's to add seeds to it (default: the "
                        "benchmark's name: the spec's, + the data folder, + given-lrs)")
    parser.add_argument("--slots", type=int, help="runs at once without GPUs (default: the spec's slots)")
    parser.add_argument("--gpus", help="comma-separated GPU ids (default: all visible; 'none' for the CPU)")
    parser.add_argument("--gpus-per-run", type=int, help="GPUs per run (default: the spec's gpus_per_run)")
    parser.add_argument("--runs-per-gpu", type=int, help="runs packed onto each GPU at once (default: the spec's)")
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
        print(plan_summary(ctx.bench, len(ctx.slots), search_rows_ + ladder_rows_))
        return 0
    if args.spec.resolve() != (ctx.sweep.root / "spec.toml").resolve():  # re-scoring a kept folder: its own spec
        shutil.copy2(args.spec, ctx.sweep.root / "spec.toml")
    data = report(ctx, searched, losses, search_rows_ + ladder_rows_, time.time() - start)
    print((ctx.sweep.root / "table.md").read_text())
    print(f"benchmark: {ctx.sweep.root} ({data['headline']})")
    if (ctx.sweep.root / records.STUDY_FILE).is_file():  # a record re-scored in place (e.g. seeds added)
        print(f"record refreshed; table: {records.refresh_study(ctx.sweep.root)}")
    if args.record:
        try:
            folder = ctx.sweep.root
            dest = records.add_study(folder, ctx.bench.track, folder.name, "benchmark", args.records_root)
        except records.RecordError as e:
            print(f"record error: {e}", file=sys.stderr)
            return 2
        print(f"record: {dest}; table: {records.write_table(args.records_root)}")
    failed = [r for r in search_rows_ + ladder_rows_ if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
