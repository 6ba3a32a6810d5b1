"""Sweeps: many training runs from one TOML spec, scheduled across the GPUs of a node, resumable,
summarized as results.csv and lr_transfer.png (final loss against learning rate, one curve per
width, one panel per optimizer: the layout of Figure 1 of the Scion paper).

    python -m scripts.studies.sweep --spec configs/sweeps/smoke.toml                 # CPU: one run after another
    python -m scripts.studies.sweep --spec configs/sweeps/lr_transfer_fineweb.toml   # every GPU of the node
    python -m scripts.studies.sweep --spec SPEC --dry-run          # the plan: each run, its status, its overrides
    python -m scripts.studies.sweep --spec SPEC --retry-failed     # also re-run the runs that failed
    python -m scripts.studies.sweep --spec SPEC --gpus 0,1,2,3     # only these GPUs
    python -m scripts.studies.sweep --spec SPEC --extend-edges 3   # widen each curve's lr grid past its best

A spec names a base config, overrides for every run, axes (config keys and their values; the runs
are every combination), extra overrides that go with an axis value, and how many GPUs one run
uses (see configs/sweeps/smoke.toml). Everything goes to <out>/<name>/ (default sweeps/<name>/):

    runs/<run_id>/         each run's directory (the trainer's --log.dir / --log.run_id)
    logs/<run_id>.txt      each run's stdout and stderr, one block per attempt
    failures/<run_id>.txt  why a run failed (exit code, last lines of output); retried only on request
    sweep.json             the base config, overrides and extras the runs were made with
    results.csv            one row per run: axes, status, final val loss, diverged, time
    lr_transfer.png        the figure

A run is finished when its summary.json says completed or diverged (a diverged run is a result:
diverged = true, final_val_loss = nan). A run that fails (summary status failed, a crash, a kill)
is started again at once, from its last checkpoint, up to `retries` times (spec key, default 1;
--retries), except after a config or data error (exit code 2), which would only repeat. Re-running
a spec skips finished runs, resumes runs that a stopped sweep left half done
(--checkpoint.resume=latest), and leaves failed runs alone unless --retry-failed. One run's failure
never stops the others; results.csv lists each run's status, failed attempts and error.

--extend-edges N: after the planned runs, every curve whose best x is the end of its grid gets the next
value beyond it (every seed), up to N rounds, until each best is interior (scripts/studies/edges.py;
the added runs are recorded in extensions.json and planned by every later invocation).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from common.config_io import toml_value
from common.exit_codes import EXIT_INTERRUPTED
from scripts.studies.edges import beyond_edges, load_extensions, save_extensions, with_extensions
from scripts.studies.results import collect_results, write_results
from scripts.studies.runner import (
    FINISHED,
    TRAIN_SCRIPT,
    Progress,
    Slot,
    SweepDir,
    Sweeper,
    interrupt_on_sigterm,
    launch_command,
    make_slots,
    parse_gpus,
    runs_to_do,
)
from scripts.studies.spec import PlannedRun, SpecError, SweepSpec, load_spec, plan_runs

# ----------------------------------------------------------------------------------------------
# Command line


def describe_plan(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun], statuses: dict, slots: list[Slot],
                  retry_failed: bool, train_script: Path = TRAIN_SCRIPT) -> str:
    """The --dry-run listing: the command every run shares, then each run's action and own overrides."""
    todo = runs_to_do(runs, statuses, retry_failed)
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in ("completed", "diverged", "failed", "pending")}
    command, _ = launch_command(runs[0], spec, sweep, slots[0], train_script, False)
    fixed = [f"--{k}={toml_value(v)}" for k, v in spec.overrides.items()]
    lines = [
        f"sweep {spec.name}: {len(runs)} runs in {sweep.root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"{len(todo)} to run on {len(slots)} slot(s): {', '.join(map(str, slots))}",
        (f"each run: {shlex.join(command[:command.index('--config') + 2] + fixed)} <run overrides> "
         f"--log.dir={sweep.runs} --log.run_id=<run id>"),
    ]
    for run in runs:
        status = statuses[run.run_id]
        if run in todo:
            action = "retry" if status == "failed" else "run"
            action += " (resume)" if sweep.run_dir(run.run_id).exists() else ""
        else:
            action = "failed (skip)" if status == "failed" else status
        own = [o for o in run.overrides if o not in fixed]
        lines.append(f"  {action:<14} {run.run_id:<40} {' '.join(own)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="sweep spec (configs/sweeps/*.toml)")
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="parent of the sweep folder (default sweeps/)")
    parser.add_argument("--gpus", help="comma-separated GPU ids (default: all visible; 'none' for the CPU)")
    parser.add_argument("--gpus-per-run", type=int, help="GPUs per run (default: the spec's gpus_per_run)")
    parser.add_argument("--runs-per-gpu", type=int, default=1, help="runs packed onto each GPU at once (default 1)")
    parser.add_argument("--retry-failed", action="store_true", help="re-run runs whose failure was recorded")
    parser.add_argument("--retries", type=int, help="automatic retries of a run that fails now (default: the "
                                                    "spec's retries, 1); config errors are never retried")
    parser.add_argument("--dry-run", action="store_true", help="list the plan and each run's status; run nothing")
    parser.add_argument("--extend-edges", type=int, default=0, metavar="N",
                        help="up to N rounds of runs beyond the grid's end where a curve's best x is there")
    parser.add_argument("--train-script", type=Path, default=TRAIN_SCRIPT, help=argparse.SUPPRESS)  # tests
    return parser


def extend_edges(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun], sweeper: Sweeper, progress: Progress,
                 rounds: int) -> bool:
    """Up to `rounds` rounds of runs beyond a grid's end where a curve's best x is there (appended to `runs`
    and saved as the sweep's extensions). False if a round was interrupted."""
    for round_ in range(1, rounds + 1):
        new = beyond_edges(collect_results(spec, sweep, runs), spec.plot, runs)
        if not new:
            print(f"edges: every curve's best {spec.plot.x} is inside its grid")
            return True
        save_extensions(sweep, load_extensions(sweep) + new)
        added = with_extensions(spec, runs, new)[len(runs):]
        runs += added
        progress.total += len(added)
        print(f"edges, round {round_} of {rounds}: {len(added)} run(s) beyond a grid's end: "
              + ", ".join(r.run_id for r in added))
        if not sweeper.run_all(runs_to_do(added, {r.run_id: sweep.status(r.run_id) for r in added}, False)):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        sweep = SweepDir(args.out / spec.name)
        runs = with_extensions(spec, plan_runs(spec), load_extensions(sweep))
        slots = make_slots(parse_gpus(args.gpus), args.gpus_per_run or spec.gpus_per_run,
                           runs_per_gpu=args.runs_per_gpu)
        statuses = {r.run_id: sweep.status(r.run_id) for r in runs}
        if args.dry_run:
            print(describe_plan(spec, sweep, runs, statuses, slots, args.retry_failed, args.train_script))
            return 0
        sweep.check_same_recipe(spec)
    except SpecError as e:
        print(f"sweep spec error: {e}", file=sys.stderr)
        return 2
    todo = runs_to_do(runs, statuses, args.retry_failed)
    skipped_failures = 0 if args.retry_failed else sum(1 for s in statuses.values() if s == "failed")
    progress = Progress(total=len(runs), done=sum(1 for s in statuses.values() if s in FINISHED),
                        failed=skipped_failures, slots=len(slots))
    print(f"sweep {spec.name}: {len(runs)} runs, {progress.done} already finished, {len(todo)} to run on "
          f"{len(slots)} slot(s) ({', '.join(map(str, slots))})"
          + (f"; {skipped_failures} failed run(s) left alone (--retry-failed)" if skipped_failures else ""))
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        sweeper = Sweeper(spec, sweep, slots, progress, args.train_script, retries=args.retries)
        finished = sweeper.run_all(todo) and extend_edges(spec, sweep, runs, sweeper, progress, args.extend_edges)
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_results(spec, sweep, runs)
    if not finished:
        return EXIT_INTERRUPTED
    return 1 if progress.failed else 0


if __name__ == "__main__":
    sys.exit(main())
