"""A sweep's results: results.csv (one row per planned run), the learning-rate transfer figure
(final loss against learning rate, one curve per width, one panel per optimizer: the layout of
Figure 1 of the Scion paper) and transfer.md / transfer.json (how many grid steps the best learning
rate moves per doubling of width)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from common import strict_json
from common.atomic import atomic_write_text
from scripts.studies.runner import FINISHED, SweepDir
from scripts.studies.spec import PlannedRun, PlotSpec, SweepSpec, format_value

# ----------------------------------------------------------------------------------------------
# Results: the CSV


def collect_results(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun]) -> list[dict]:
    """One row per planned run. final_val_loss is nan for a diverged run and None for a run
    without a result (failed, pending)."""
    rows = []
    for run in runs:
        status = sweep.status(run.run_id)
        summary = (sweep.summary(run.run_id) or {}) if status in FINISHED else {}
        loss = summary.get("final_val_loss") if status == "completed" else None
        if status == "diverged" or (loss is not None and not math.isfinite(loss)):
            loss = math.nan
        train_ms = summary.get("train_time_ms")
        rows.append({
            "run_id": run.run_id, **run.values, "status": status, "diverged": status == "diverged",
            "final_val_loss": loss, "steps": summary.get("steps"),
            "train_time_s": None if train_ms is None else round(train_ms / 1000, 3),
            "step_avg_ms": summary.get("step_avg_ms"), "attempts_failed": sweep.attempts(run.run_id),
            "error": _error(sweep, run.run_id) if status == "failed" else "",
        })
    return rows


def _error(sweep: SweepDir, run_id: str) -> str:
    """A failed run's error: its summary's (status failed) or the recorded failure's line."""
    return (sweep.summary(run_id) or {}).get("error") or sweep.error(run_id)


def plotted(row: dict) -> bool:
    """Runs with a result: completed with a final loss, or diverged (drawn as a cross)."""
    return row["diverged"] or (row["status"] == "completed" and row["final_val_loss"] is not None)


def write_csv(rows: list[dict], path: Path) -> Path:
    """results.csv; empty cells for missing values, 'nan' for diverged losses."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else format_value(v) for k, v in row.items()})
    return atomic_write_text(path, text.getvalue())


# ----------------------------------------------------------------------------------------------
# Results: the learning-rate transfer figure


def transfer_curves(rows: list[dict], plot: PlotSpec) -> dict:
    """{panel value: {curve value: {x: mean final loss}}} over finished runs, averaging the other
    axes (seeds). A point where any run diverged is inf."""
    groups: dict = {}
    for row in rows:
        if not plotted(row):
            continue
        point = groups.setdefault(row.get(plot.panels), {}).setdefault(row.get(plot.curves), {})
        point.setdefault(row[plot.x], []).append(math.inf if row["diverged"] else row["final_val_loss"])
    return {panel: {curve: {x: statistics.fmean(v) for x, v in sorted(pts.items())} for curve, pts in _sorted(curves)}
            for panel, curves in groups.items()}


def _sorted(mapping: dict) -> list:
    """Items sorted by key when the keys are numbers (widths), else in order of appearance."""
    items = list(mapping.items())
    return sorted(items) if all(isinstance(k, (int, float)) for k, _ in items) else items


def best_x(points: dict):
    """The x of the lowest finite loss, or None."""
    finite = {x: y for x, y in points.items() if math.isfinite(y)}
    return min(finite, key=finite.get) if finite else None


def plot_lr_transfer(rows: list[dict], plot: PlotSpec, out: Path, title: str = "") -> Path | None:
    """Final loss against plot.x (log2 axis), one curve per plot.curves value, one panel per
    plot.panels value, the y range zoomed on the good losses. Each curve's best x is a star; a
    point above the range is a triangle at the top edge (its line leaves the panel); a diverged
    point is a cross at the top edge and not part of the curve. Returns None when no run has
    finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = transfer_curves(rows, plot)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(max(7.5, 5 * len(curves)), 4.2), sharey=True, squeeze=False,
                             constrained_layout=True)
    finite = [y for panel in curves.values() for pts in panel.values() for y in pts.values() if math.isfinite(y)]
    y_range = loss_range(finite)
    for ax, (panel, panel_curves) in zip(axes[0], curves.items(), strict=True):
        draw_panel(ax, panel_curves, plot, plt.get_cmap("viridis"), top=y_range[1] if y_range else math.inf)
        ax.set_title(f"{plot.panels} = {panel}" if panel is not None else title)
    axes[0][0].set_ylabel("final validation loss")
    if y_range:
        axes[0][0].set_ylim(*y_range)
    fig.suptitle(f"{title}: final val loss vs {plot.x}, one curve per {plot.curves}\n"
                 f"\u2605 best {plot.x} of each curve; \u25b2 above this range; \u00d7 diverged "
                 f"(not part of the curve)", fontsize=10)
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def loss_range(losses: list[float]) -> tuple[float, float] | None:
    """y limits from the best loss up to a few times its distance to the median loss, so that a
    few bad learning rates do not squash the differences near the optimum."""
    if not losses:
        return None
    lo, mid = min(losses), statistics.median(losses)
    span = max(mid - lo, 0.01 * abs(lo), 1e-3)
    return lo - 0.3 * span, min(max(losses), lo + 4 * span) + 0.3 * span


def draw_panel(ax, panel_curves: dict, plot: PlotSpec, cmap, top: float) -> None:
    """One panel: a line per curve through its finite points, its best point starred, points above
    `top` (triangles) and diverged points (crosses) marked at the top edge."""
    n = len(panel_curves)
    for i, (curve, points) in enumerate(panel_curves.items()):
        color = cmap(0.85 * i / max(n - 1, 1))
        xs = [x for x, y in points.items() if math.isfinite(y)]
        best = best_x(points)
        name = f"{plot.curves.rsplit('.', 1)[-1]} {curve}" if curve is not None else "all runs"
        label = name + (f": best {best:g}" if best is not None else "")
        ax.plot(xs, [points[x] for x in xs], "o-", color=color, lw=1.5, ms=4, label=label)
        if best is not None:
            ax.plot([best], [points[best]], "*", color=color, ms=16, mec="black", mew=0.8, zorder=5)
        at_top = ax.get_xaxis_transform()  # x in data units, y in axes units
        above = [x for x in xs if points[x] > top]
        if above:
            ax.plot(above, [0.97] * len(above), "^", color=color, ms=8, mec="black", mew=0.5, transform=at_top,
                    clip_on=False, zorder=6)
        diverged = [x for x, y in points.items() if not math.isfinite(y)]
        if diverged:
            ax.plot(diverged, [0.97] * len(diverged), "x", color=color, ms=9, mew=2, transform=at_top, clip_on=False)
    ax.set_xscale("log", base=2)
    grid = sorted({x for points in panel_curves.values() for x in points})
    ax.set_xticks(grid, [f"{x:.3g}" for x in grid], fontsize=8)  # the swept values, not powers of two
    ax.minorticks_off()
    ax.set_xlabel(f"{plot.x} (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def write_results(spec: SweepSpec, sweep: SweepDir, runs: list[PlannedRun], say=print) -> list[dict]:
    rows = collect_results(spec, sweep, runs)
    say(f"results: {write_csv(rows, sweep.results)}")
    figure = plot_lr_transfer(rows, spec.plot, sweep.figure, title=spec.name)
    say(f"figure: {figure}" if figure else "figure: no finished run yet")
    shift = write_transfer(rows, spec.plot, sweep.root, title=spec.name)
    if shift:
        say(f"transfer: {sweep.root / 'transfer.md'}: {transfer_headline(shift, spec.plot)}")
    left_out = [f"{r['run_id']} ({r['status']})" for r in rows if not plotted(r)]
    if figure and left_out:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        say(f"figure: {len(left_out)} run(s) without a result left out: {shown}")
    return rows


# ----------------------------------------------------------------------------------------------
# Results: how far the best learning rate moves per doubling of width


def lr_shift(rows: list[dict], plot: PlotSpec) -> dict:
    """Per panel (optimizer): the best plot.x of each curve (width) with its mean loss, and the
    least-squares slope of log2(best x) against log2(curve value), also in grid steps per doubling
    (the slope / log2 of the ratio between neighbouring grid values; the same number for a grid in
    factors of 2). 0: the best x stays put (it transfers); -1: it halves with every doubling. `edge`
    lists the curves whose best x is the smallest or largest x they tried (widen the grid there).
    Empty unless the curve values are positive numbers."""
    shift = {}
    for panel, curves in transfer_curves(rows, plot).items():
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in curves):
            return {}
        best = {c: best_x(points) for c, points in curves.items()}
        best = {c: x for c, x in best.items() if x is not None}
        grid = sorted({x for points in curves.values() for x in points})
        ratio = statistics.median(b / a for a, b in zip(grid, grid[1:], strict=False)) if len(grid) > 1 else None
        slope = fit_slope([math.log2(c) for c in best], [math.log2(x) for x in best.values()])
        shift[panel] = {
            "best": {c: {"x": x, "loss": curves[c][x]} for c, x in best.items()},
            "slope_log2": slope, "grid_ratio": ratio,
            "steps_per_doubling": None if slope is None or not ratio or ratio <= 1 else slope / math.log2(ratio),
            "edge": [c for c, x in best.items() if x in (min(curves[c]), max(curves[c])) and len(curves[c]) > 1],
        }
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    if len(seeds) > 1:  # the same slope from each seed alone: its spread says how much one seed can be trusted
        by_seed = {seed: lr_shift([r for r in rows if r.get("seed") == seed], plot) for seed in seeds}
        for panel, s in shift.items():
            per = {seed: by_seed[seed].get(panel, {}).get("steps_per_doubling") for seed in seeds}
            known = [v for v in per.values() if v is not None]
            s["per_seed"] = per
            s["seed_spread"] = max(known) - min(known) if len(known) > 1 else None
    return shift


def fit_slope(xs: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of ys against xs; None with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _known(s: dict) -> list[float]:
    return [v for v in s.get("per_seed", {}).values() if v is not None]


def transfer_headline(shift: dict, plot: PlotSpec) -> str:
    """One line: grid steps the best x moves per doubling of the curve value, per panel."""
    parts = [f"{panel} {'n/a' if s['steps_per_doubling'] is None else format(s['steps_per_doubling'], '+.2f')}"
             + ("" if s.get("seed_spread") is None else f" (seeds {min(_known(s)):+.2f}..{max(_known(s)):+.2f})")
             + (" (edge)" if s["edge"] else "") for panel, s in shift.items()]
    return f"grid steps the best {plot.x} moves per doubling of {plot.curves}: " + ", ".join(parts)


def write_transfer(rows: list[dict], plot: PlotSpec, root: Path, title: str = "") -> dict:
    """transfer.md (a table: the best x of each curve, the steps per doubling) and transfer.json
    (the same numbers) in `root`; nothing when lr_shift is empty."""
    shift = lr_shift(rows, plot)
    if not shift:
        return {}
    curves = sorted({c for s in shift.values() for c in s["best"]})
    short = plot.curves.rsplit(".", 1)[-1]
    lines = [f"# {title}: how far the best {plot.x} moves per doubling of {plot.curves}", "",
             f"Each cell: the best {plot.x} of that {short} (lowest final validation loss, mean over seeds) and "
             f"its loss. Steps per doubling: the least-squares slope of log2(best {plot.x}) against "
             f"log2({short}), in grid steps (a grid step is a factor of the grid ratio). 0: the best "
             "value stays put (it transfers); -1: it moves down one grid step with every doubling. "
             "EDGE: the best is the end of the grid (widen it there).", "",
             f"| {plot.panels} | " + " | ".join(f"{short} {c:g}" for c in curves)
             + " | grid ratio | steps per doubling | each seed alone |",
             "| --- | " + " | ".join("---:" for _ in curves) + " | ---: | ---: | ---: |"]
    for panel, s in shift.items():
        cells = [f"{s['best'][c]['x']:.4g} ({s['best'][c]['loss']:.4f})" + (" EDGE" if c in s["edge"] else "")
                 if c in s["best"] else "n/a" for c in curves]
        spd = "n/a" if s["steps_per_doubling"] is None else f"{s['steps_per_doubling']:+.2f}"
        ratio = "n/a" if s["grid_ratio"] is None else f"{s['grid_ratio']:.3g}"
        per_seed = ", ".join(f"{seed}: " + ("n/a" if v is None else f"{v:+.2f}") for seed, v in s.get("per_seed", {}).items())
        lines.append(f"| {panel} | " + " | ".join(cells) + f" | {ratio} | {spd} | {per_seed or 'one seed'} |")
    lines += ["", transfer_headline(shift, plot), ""]
    atomic_write_text(Path(root) / "transfer.md", "\n".join(lines))
    as_json = {str(panel): {**s, "best": {format_value(c): v for c, v in s["best"].items()}}
               for panel, s in shift.items()}
    atomic_write_text(Path(root) / "transfer.json", strict_json.dumps(
        {"x": plot.x, "curves": plot.curves, "panels": plot.panels, "headline": transfer_headline(shift, plot),
         "shift": as_json}, indent=1) + "\n")
    return shift
