"""The Lipschitz-vs-accuracy figure of a constraint sweep (configs/sweeps/lipschitz_shakespeare.toml): final
validation accuracy against log10 of the final Lipschitz bound (model/lipschitz.py), one curve per
(optimizer, constraint method) - the main figure of Newhouse et al., "Training Transformers with Enforced
Lipschitz Constants" (2025). Method "none" is the weight-decay baseline: its curve runs over weight decay.

    python -m scripts.studies.sweep --spec configs/sweeps/lipschitz_shakespeare.toml                # the runs
    python -m scripts.studies.lipschitz_plot --spec configs/sweeps/lipschitz_shakespeare.toml  # the figure
    python -m scripts.records add-study sweeps/lipschitz_shakespeare --track cpu-shakespeare --name NAME \
        --kind sweep --spec configs/sweeps/lipschitz_shakespeare.toml                    # keep it as a record

Writes lipschitz.csv (one row per run: its axis values, status, final val accuracy and loss, bound),
lipschitz.png and lipschitz.json (each curve's points; its headline, each curve's most accurate run, is what
the records table shows) into the sweep folder. Runs without a result (failed, pending, diverged) are left
out of the figure and named.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from common import strict_json
from common.atomic import atomic_write_text
from scripts.studies.runner import SweepDir
from scripts.studies.spec import PlannedRun, SpecError, load_spec, plan_runs

CURVE_KEYS = ("optim.name", "constraint.method")


def collect(sweep: SweepDir, runs: list[PlannedRun]) -> list[dict]:
    """One row per planned run: its axis values, status, final accuracy, loss and Lipschitz bound."""
    rows = []
    for run in runs:
        summary = sweep.summary(run.run_id) or {}
        rows.append({"run_id": run.run_id, **run.values, "status": sweep.status(run.run_id),
                     "final_val_accuracy": summary.get("final_val_accuracy"),
                     "final_val_loss": summary.get("final_val_loss"),
                     "lipschitz_bound": summary.get("lipschitz_bound"),
                     "log10_lipschitz_bound": summary.get("log10_lipschitz_bound"),
                     "train_time_s": None if summary.get("train_time_ms") is None else summary["train_time_ms"] / 1000})
    return rows


def has_point(row: dict) -> bool:
    return row["status"] == "completed" and row["final_val_accuracy"] is not None and \
        row["log10_lipschitz_bound"] is not None and math.isfinite(row["log10_lipschitz_bound"])


def curves(rows: list[dict]) -> dict:
    """{(optimizer, method): [(log10 bound, accuracy, run_id), ...] sorted by the bound}."""
    out: dict = {}
    for row in rows:
        if has_point(row):
            key = tuple(row.get(k) for k in CURVE_KEYS)
            out.setdefault(key, []).append((row["log10_lipschitz_bound"], row["final_val_accuracy"], row["run_id"]))
    return {k: sorted(v) for k, v in out.items()}


def plot(rows: list[dict], out: Path, title: str = "") -> Path | None:
    """Accuracy against log10 bound: colour per method, line style and marker per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = curves(rows)
    if not lines:
        return None
    methods = sorted({m for _, m in lines})
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    styles = {"muon": ("-", "o"), "adamw": ("--", "s")}
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    for (optim, method), points in lines.items():
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        line, marker = styles.get(optim, (":", "^"))
        label = f"{optim} + {'weight decay' if method == 'none' else method}"
        ax.plot(xs, ys, line, marker=marker, color=colors[method], label=label, ms=6, lw=1.6)
    ax.set_xlabel("log10 Lipschitz bound (RMS -> RMS, max over tokens; model/lipschitz.py)")
    ax.set_ylabel("final validation accuracy (next character)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: accuracy vs Lipschitz bound, one curve per optimizer / constraint", fontsize=10)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_table(rows: list[dict], path: Path) -> Path:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return atomic_write_text(path, text.getvalue())


def summarize(rows: list[dict], path: Path) -> Path:
    """lipschitz.json: every curve's points and a headline (each curve's most accurate run and its bound),
    which `python -m scripts.records add-study` shows in the records table."""
    lines = curves(rows)
    best = {f"{o}+{'weight_decay' if m == 'none' else m}": max(points, key=lambda p: p[1])
            for (o, m), points in lines.items()}
    headline = "best val accuracy (log10 bound): " + ", ".join(
        f"{k} {acc:.3f} ({log10:.1f})" for k, (log10, acc, _) in best.items())
    data = {"headline": headline if best else "no run with a result",
            "curves": {f"{o}+{m}": [dict(log10_bound=p[0], accuracy=p[1], run_id=p[2]) for p in points]
                       for (o, m), points in lines.items()}}
    return atomic_write_text(path, strict_json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="the sweep spec (configs/sweeps/*.toml)")
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="parent of the sweep folder (default sweeps/)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        runs = plan_runs(spec)
    except SpecError as e:
        print(f"sweep spec error: {e}", file=sys.stderr)
        return 2
    sweep = SweepDir(args.out / spec.name)
    rows = collect(sweep, runs)
    print(f"table: {write_table(rows, sweep.root / 'lipschitz.csv')}")
    figure = plot(rows, sweep.root / "lipschitz.png", title=spec.name)
    print(f"figure: {figure}" if figure else "figure: no run with a result yet")
    left_out = [f"{r['run_id']} ({r['status']})" for r in rows if not has_point(r)]
    if left_out:
        print(f"left out ({len(left_out)}, no result): {', '.join(left_out)}")
    print(f"summary: {summarize(rows, sweep.root / 'lipschitz.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
