"""Grids without edges: when a curve's best learning rate is the smallest or largest it tried, the sweep
adds the next value beyond it (one grid ratio further) for that curve (every seed), runs it, and looks
again, up to --extend-edges rounds. A best value at the end of the grid says only "at least this far",
so a transfer slope fitted through it is a bound, not a measurement.

The added runs are kept in <sweep>/extensions.json (their axis values), so every later invocation of the
same spec plans them too (results.csv, the figure and transfer.md include them) whether or not it asks for
more rounds. Their run ids follow the spec's (the value of the x axis differs)."""

from __future__ import annotations

import json

from common.atomic import atomic_write_json
from scripts.studies.results import lr_shift
from scripts.studies.runner import SweepDir
from scripts.studies.spec import PlannedRun, PlotSpec, SweepSpec, run_id, run_overrides, short_names

EXTENSIONS = "extensions.json"


def load_extensions(sweep: SweepDir) -> list[dict]:
    """The axis values of every run an earlier round added (empty when none)."""
    path = sweep.root / EXTENSIONS
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def save_extensions(sweep: SweepDir, values: list[dict]) -> None:
    atomic_write_json(sweep.root / EXTENSIONS, {"runs": values})


def planned(spec: SweepSpec, values: dict) -> PlannedRun:
    """The planned run of these axis values (its id and overrides as plan_runs makes them)."""
    names = short_names([a.key for a in spec.axes])
    return PlannedRun(run_id(values, names), values, run_overrides(spec, values))


def with_extensions(spec: SweepSpec, runs: list[PlannedRun], extensions: list[dict]) -> list[PlannedRun]:
    """The spec's runs followed by the recorded extensions (each once)."""
    seen = {r.run_id for r in runs}
    out = list(runs)
    for values in extensions:
        run = planned(spec, values)
        if run.run_id not in seen:
            seen.add(run.run_id)
            out.append(run)
    return out


def beyond_edges(rows: list[dict], plot: PlotSpec, runs: list[PlannedRun]) -> list[dict]:
    """Axis values of the next runs: for each curve whose best x (mean over seeds) is an end of what it
    tried, that best x times the grid ratio (past the largest) or divided by it (below the smallest),
    once for every run at the best x (one per seed). Empty when no curve ends on an edge, or when the
    curves are not numbers (lr_shift's condition)."""
    new, ids = [], {json.dumps(r.values, sort_keys=True) for r in runs}
    for panel, shift in lr_shift(rows, plot).items():
        ratio = shift["grid_ratio"]
        if not ratio or ratio <= 1:
            continue
        for curve in shift["edge"]:
            best = shift["best"][curve]["x"]
            tried = [r.values[plot.x] for r in runs
                     if r.values.get(plot.panels) == panel and r.values.get(plot.curves) == curve]
            x = best * ratio if best >= max(tried) else best / ratio
            for r in runs:
                if (r.values.get(plot.panels), r.values.get(plot.curves), r.values[plot.x]) == (panel, curve, best):
                    values = {**r.values, plot.x: x}
                    key = json.dumps(values, sort_keys=True)
                    if key not in ids:
                        ids.add(key)
                        new.append(values)
    return new
