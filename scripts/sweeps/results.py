"""A sweep's results: results.csv (one row per planned run) and the learning-rate transfer figure
(final loss against learning rate, one curve per width, one panel per optimizer: the layout of
Figure 1 of the Scion paper)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from scripts.sweeps.runner import FINISHED, SweepDir
from scripts.sweeps.spec import PlannedRun, PlotSpec, SweepSpec, format_value
from training.atomic import atomic_write_text


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
            "step_avg_ms": summary.get("step_avg_ms"), "error": sweep.error(run.run_id) if status == "failed" else "",
        })
    return rows


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
        if row["status"] not in FINISHED:
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
    return rows
