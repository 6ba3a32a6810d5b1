"""Records: logged runs kept in the repository, their README table, p-values and loss curves.

    python -m scripts.records add runs/A runs/B runs/C --track 124m --name "muon baseline"
    python -m scripts.records table
    python -m scripts.records check records/124m/2026-01-26_muon-baseline --target 3.28
    python -m scripts.records plot records/124m/2026-01-26_muon-baseline records/124m/... --out curves.png
    python -m scripts.records add-study sweeps/lr_transfer_shakespeare --track cpu-shakespeare --name "lr transfer" \
        --kind sweep --spec configs/sweeps/lr_transfer_shakespeare.toml

A record is a folder `records/<track>/<YYYY-MM-DD>_<title>/` with one sub-folder per run (usually
one per seed) holding the run's config.toml, log.txt, metrics.jsonl and summary.json, copied from
the trainer's run directory (checkpoints stay behind). Nothing is ever overwritten.

A study record (`add-study`: a benchmark or a sweep, scripts/studies/benchmark.py and scripts/studies/sweep.py)
keeps a whole sweep folder the same way: `runs/<run id>/` with each run's four files (diverged runs
too: they are results), its tables, figures and JSON, the spec, and `record.json` (kind, headline,
figures, hardware) that the README's "Benchmarks and sweeps" table is made from.

`check` and `plot` take record folders, run directories, or folders of run directories.
`check` runs a one-sided one-sample t-test of "the mean final validation loss is below the
target"; the speedrun's rule for a new record is p < 0.01.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from scripts.records.book import (
    RECORDS,
    RecordError,
    add_record,
    add_study,
    check,
    find_runs,
    read_metrics,
    write_table,
)

# ----------------------------------------------------------------------------------------------
# plot: validation-loss curves


def plot_curves(paths: list[Path], out: Path, target: float | None = None) -> Path:
    """Validation loss against step (left) and against training time (right), one colour per
    given path (a record's seeds share its colour); `target` draws a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for i, path in enumerate(paths):
        runs = find_runs(path)
        for j, run in enumerate(runs):
            rows = [r for r in read_metrics(run) if r.get("val_loss") is not None]
            if not rows:
                continue
            label = (Path(path).name + (f" ({len(runs)} runs)" if len(runs) > 1 else "")) if j == 0 else None
            style = dict(color=colors(i % 10), lw=1.2, alpha=0.8, label=label, marker=".", ms=3)
            by_step.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], **style)
            by_time.plot([r["train_time_ms"] / 1000 for r in rows], [r["val_loss"] for r in rows], **style)
    for ax, xlabel in ((by_step, "step"), (by_time, "training time (s)")):
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    _zoom_on_the_end(by_step, target)
    _zoom_on_the_end(by_time, target)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _zoom_on_the_end(ax, target: float | None) -> None:
    """Losses start near ln(vocab) and end far lower: show the range where runs differ, i.e.
    from the lowest point (or the target) up to a few times the distance to the median end."""
    curves = [line.get_ydata() for line in ax.get_lines() if len(line.get_ydata()) > 1]
    if not curves:
        return
    lo = min(min(y) for y in curves + ([[target]] if target is not None else []))
    mid = statistics.median(y[-1] for y in curves)
    span = max(mid - lo, 0.02 * abs(mid), 1e-3)
    top = max(max(y) for y in curves)
    ax.set_ylim(lo - 0.5 * span, min(top, mid + 8 * span) + 0.1 * span)


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=RECORDS, help="records folder (default: records/)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("add", help="copy run directories into a new record")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--track", required=True, help="e.g. 124m, cpu-smoke")
    p.add_argument("--name", required=True, help="the record's title")
    p.add_argument("--date", help="YYYY-MM-DD (default: today)")
    p = sub.add_parser("add-study", help="copy a sweep or benchmark folder (sweeps/<name>/) into a new record")
    p.add_argument("folder", type=Path)
    p.add_argument("--track", required=True, help="e.g. cpu-shakespeare")
    p.add_argument("--name", required=True, help="the record's title")
    p.add_argument("--kind", choices=("benchmark", "sweep"), default="sweep")
    p.add_argument("--spec", type=Path, action="append", default=[], help="a file to keep with it (the spec)")
    p.add_argument("--headline", help="the result in one line (default: the headline of the folder's JSON)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today)")
    sub.add_parser("table", help="regenerate records/README.md")
    p = sub.add_parser("check", help="one-sided t-test: is the mean final val loss below the target?")
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--target", type=float, required=True)
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p = sub.add_parser("plot", help="validation-loss curves against step and time")
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("val_loss.png"))
    p.add_argument("--target", type=float, help="draw the target loss as a dashed line")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "add":
        dest = add_record(args.runs, args.track, args.name, args.root, args.date)
        print(f"added {len(args.runs)} run(s) to {dest}")
        print(f"table: {write_table(args.root)}")
    elif args.command == "add-study":
        dest = add_study(args.folder, args.track, args.name, args.kind, args.root, args.date, args.headline,
                         tuple(args.spec))
        print(f"added {args.folder} to {dest}")
        print(f"table: {write_table(args.root)}")
    elif args.command == "table":
        print(f"wrote {write_table(args.root)}")
    elif args.command == "check":
        result, report = check(args.dirs, args.target, args.alpha)
        print(report)
        return 0 if result.p < args.alpha else 1
    elif args.command == "plot":
        print(f"wrote {plot_curves(args.dirs, args.out, args.target)}")
    return 0

