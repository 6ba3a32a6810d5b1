"""Scores of a benchmark: when each seed's ladder of budgets reaches the target (steps to target), the
target itself when it names a rung of an optimizer's ladder, each optimizer's mean and range and its ratio
to the reference with a confidence interval and a test, and the table's rows. The protocol:
scripts/studies/benchmark.py.

Intervals and tests are over seeds, on the per-seed steps to target: a Student t interval for the mean
(mean +- t_{n-1} s / sqrt(n)), and Welch's two-sided t-test of each optimizer's steps against the
reference's. Not a bootstrap: with 3 seeds a bootstrap's percentile interval never leaves the observed
min-max and so understates the spread; the t interval is wide for 3 seeds, as it should be. A seed that
reaches the target at the smallest budget counts as that budget (an upper bound); an optimizer with a seed
that never reaches it has no interval and no test."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

from scripts.studies.benchmark_spec import BenchmarkSpec, parse_target
from scripts.studies.spec import SpecError


@dataclass(frozen=True)
class Reach:
    """When one seed's ladder reaches the target: steps (None: not within the largest budget) and
    how: "interpolated", "smallest" (reached at the smallest budget: an upper bound), "never"."""

    steps: float | None
    how: str

    def text(self, largest: int) -> str:
        if self.how == "missing":
            return "n/a (a run failed or has not run)"
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


def seed_reach(losses: dict, target: float) -> Reach:
    """steps_to_target, except that a rung whose run failed or has not run (None) makes the seed "missing"
    rather than "never reached" (a diverged run is inf: it did run, and counts as not reaching)."""
    if any(x is None for x in losses.values()):
        return Reach(None, "missing")
    return steps_to_target(losses, target)


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


def t_interval(xs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student t interval for the mean of xs (None for fewer than 2 values)."""
    if len(xs) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    mean = statistics.fmean(xs)
    return mean - half, mean + half


def ratio_interval(xs: list[float], ys: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """An interval of mean(xs)/mean(ys) by the delta method: the ratio ± t·ratio·√((se_x/x̄)² + (se_y/ȳ)²), with
    the standard errors of the two means and Student's t at the smaller sample's degrees of freedom (None: fewer
    than 2 values in one). Approximate: it says whether a ratio moved by more than its noise, not a test."""
    if len(xs) < 2 or len(ys) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    rel = math.hypot(statistics.stdev(xs) / math.sqrt(len(xs)) / mx, statistics.stdev(ys) / math.sqrt(len(ys)) / my)
    half = stats.t.ppf(0.5 + level / 2, min(len(xs), len(ys)) - 1) * rel * mx / my
    return mx / my - half, mx / my + half


def welch_p(xs: list[float], ys: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that xs and ys have the same mean (None: fewer than 2 values in one,
    or no spread in either: nothing to test against)."""
    if len(xs) < 2 or len(ys) < 2:
        return None
    if statistics.pstdev(xs) == 0 and statistics.pstdev(ys) == 0:
        return None
    return float(stats.ttest_ind(xs, ys, equal_var=False).pvalue)


def score(bench: BenchmarkSpec, ladder: dict, target: float) -> dict:
    """Per optimizer: each seed's Reach; when every seed reaches, the mean, min and max steps, the t interval
    of the mean ("ci") and Welch's p-value against the reference ("p"; None for the reference itself)."""
    scores = {}
    for opt, by_budget in ladder.items():
        reaches = {s: seed_reach({b: by_budget.get(b, {}).get(s) for b in bench.budgets}, target) for s in bench.seeds}
        steps = [r.steps for r in reaches.values()]
        done = all(x is not None for x in steps)
        scores[opt] = {"reaches": reaches, "mean": statistics.fmean(steps) if done else None,
                       "min": min(steps) if done else None, "max": max(steps) if done else None,
                       "reached": sum(x is not None for x in steps), "steps": steps if done else None,
                       "ci": t_interval(steps, bench.level) if done else None}
    ref = scores.get(bench.reference, {})
    for opt, s in scores.items():
        s["ratio"] = s["mean"] / ref["mean"] if s["mean"] is not None and ref.get("mean") else None
        mine = opt != bench.reference and s["steps"] is not None and ref.get("steps") is not None
        s["p"] = welch_p(s["steps"], ref["steps"]) if mine else None
        s["ratio_ci"] = ratio_interval(s["steps"], ref["steps"], bench.level) if mine else None
        s["significant"] = s["p"] is not None and s["p"] < bench.alpha
    return scores


def score_json(s: dict) -> dict:
    """One optimizer's score as benchmark.json holds it."""
    return {"per_seed": {str(seed): {"steps": r.steps, "how": r.how} for seed, r in s["reaches"].items()},
            "ci": list(s["ci"]) if s["ci"] else None, "ratio_ci": list(s["ratio_ci"]) if s.get("ratio_ci") else None,
            **{k: s.get(k) for k in ("mean", "min", "max", "ratio", "reached", "p", "significant")}}


def search_noise(per_lr: dict) -> tuple[float, int]:
    """(tol, k): two standard errors of a difference of two means of k seeds, the spread pooled over the lrs
    where every seed is finite; tol 0 when it is unknown (one seed)."""
    k = min(len(v) for v in per_lr.values())
    spreads = [statistics.variance(v) for v in per_lr.values() if len(v) >= 2 and all(map(math.isfinite, v))]
    return (2 * math.sqrt(statistics.fmean(spreads) * 2 / k) if k >= 2 and spreads else 0.0), k


def non_monotone(per_lr: dict) -> str | None:
    """per_lr = {lr: [final loss of each search seed]} (inf: diverged or failed). A search's mean losses should
    fall toward the best lr and rise past it; say where they do not by more than their noise (search_noise;
    one seed: the noise is unknown and any reversal is named)."""
    lrs = sorted(per_lr)
    means = [statistics.fmean(per_lr[lr]) if per_lr[lr] else math.inf for lr in lrs]
    best = min(range(len(lrs)), key=means.__getitem__)
    if not math.isfinite(means[best]) or len(lrs) < 3:
        return None
    tol, k = search_noise(per_lr)
    noise = f"beyond the noise {tol:.4f} ({k} seeds)" if tol else "(one seed: its noise unknown)"
    for i in range(len(lrs) - 1):
        toward_best = i < best
        jump = (means[i + 1] - means[i]) if toward_best else (means[i] - means[i + 1])
        if jump > tol:
            side = "rises toward" if toward_best else "falls away from"
            return (f"the loss {side} the best lr between {lr_text(lrs[i])} and {lr_text(lrs[i + 1])} "
                    f"({loss_text(means[i])} -> {loss_text(means[i + 1])}) {noise}")
    return None


def refine_gain(per_lr: dict) -> float | None:
    """How much lower than the best lr's mean loss can a refinement midpoint (the best lr x 2^(+-1/2)) be?
    per_lr = {lr: [final loss of each search seed]}. Near its minimum the loss is about quadratic in x =
    log2(lr): L(x) = L* + c (x - x*)^2, with c the second divided difference of the mean losses at the best lr
    and its two neighbours. The minimum x* lies within h/2 of the best (h: the wider of the two spacings), so
    the better midpoint, 1/2 away, gains at most c (h/2 - 1/4): for a grid in factors of 2 (h = 1), the second
    difference L(-1) + L(+1) - 2 L(0) over 8. None when it cannot be computed: the best at the grid's end,
    or a neighbour diverged or failed."""
    lrs = sorted(per_lr)
    means = [statistics.fmean(per_lr[lr]) if per_lr[lr] else math.inf for lr in lrs]
    best = min(range(len(lrs)), key=means.__getitem__)
    if best in (0, len(lrs) - 1) or not math.isfinite(means[best - 1] + means[best + 1]):
        return None
    lo, mid, hi = means[best - 1:best + 2]
    h_lo, h_hi = math.log2(lrs[best] / lrs[best - 1]), math.log2(lrs[best + 1] / lrs[best])
    c = ((hi - mid) / h_hi + (lo - mid) / h_lo) / (h_lo + h_hi)
    return c * (max(h_lo, h_hi) / 2 - 0.25)


def refine_worth(per_lr: dict) -> tuple[bool, str]:
    """Refine the coarse search only where it can matter: where a midpoint may beat the best lr by more than
    the search's noise (refine_gain against search_noise), or where that cannot be told (one seed, the best
    at the grid's end, a diverged or failed neighbour). Else the midpoints equal the best within noise, and
    their runs would measure noise. Returns (refine?, why)."""
    tol, k = search_noise(per_lr)
    gain = refine_gain(per_lr)
    if not tol:
        return True, "the search's noise is unknown (one seed)"
    if gain is None:
        return True, "the best lr is the end of the grid, or a neighbour diverged or failed"
    if gain > tol:
        return True, f"a midpoint may gain up to {gain:.4f}, more than the noise {tol:.4f} ({k} seeds)"
    return False, f"a midpoint gains at most {gain:.4f}, within the noise {tol:.4f} ({k} seeds)"


def refine_text(bench, searched: dict) -> str:
    """The table's sentence on the refinement: always, never, or where it could matter (and where not, why)."""
    if not bench.refine:
        return "."
    if bench.refine is True:
        return "; then the best x 2^(+-1/2)."
    skipped = [f"not for {opt}: {s['refine_skipped']}" for opt, s in searched.items() if s.get("refine_skipped")]
    return ("; then the best x 2^(+-1/2) where a midpoint could beat the best by more than the search's noise "
            "(scripts/studies/scores.py: refine_worth)" + (f"; {'; '.join(skipped)}." if skipped else "."))


def lr_text(x: float) -> str:
    return f"{x:.4g}"


def loss_text(x) -> str:
    return "n/a" if x is None else ("diverged" if not math.isfinite(x) else f"{x:.4f}")


def lr_cell(searched: dict, opt: str) -> str:
    """The best lr with its flags: EDGE (the end of the search grid), given (one lr, no search)."""
    s = searched[opt]
    if s["best"] is None:
        return "none trained"
    flags = [" EDGE"] if s["edge"] else []
    flags += [" (given)"] if len(s["losses"]) == 1 else []
    flags += [" NON-MONOTONE"] if s.get("non_monotone") else []
    return lr_text(s["best"]) + "".join(flags)


def p_text(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def steps_rows(bench: BenchmarkSpec, searched: dict, scores: dict) -> list[str]:
    """The main table: best lr, steps to target (mean, interval, range, per seed), ratio and p vs the reference."""
    pct = f"{100 * bench.level:g}%"
    best = "best lr" if bench.search_roles == "main" else "best lr scale (every role)"
    lines = [f"| optimizer | {best} | steps to target (mean over seeds) | {pct} interval | range (min-max) | per seed "
             f"| x {bench.reference} ({pct}) | p vs {bench.reference} |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for opt in bench.optimizers:
        lr = lr_cell(searched, opt)
        if "optim.lr_scale" in bench.extra.get(opt, {}):  # a given scale of every role's lr (--lrs-from)
            lr += f", every role x {bench.extra[opt]['optim.lr_scale']:.3g}"
        s = scores.get(opt)
        if s is None:
            lines.append(f"| {opt} | {lr} | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        if s["mean"] is not None:
            mean, spread = f"{s['mean']:.0f}", f"{s['min']:.0f}-{s['max']:.0f}"
            if all(r.how == "smallest" for r in s["reaches"].values()):
                mean = f"<= {s['mean']:.0f}"
        else:
            missing = sum(r.how == "missing" for r in s["reaches"].values())
            mean, spread = (f"n/a ({missing} seed(s) with a failed or missing run)" if missing else
                            f"> {bench.largest} ({s['reached']} of {len(bench.seeds)} seeds reach it)"), "n/a"
        ci = "n/a" if s["ci"] is None else f"{max(s['ci'][0], 0):.0f}-{s['ci'][1]:.0f}"
        seeds = ", ".join(r.text(bench.largest) for r in s["reaches"].values())
        ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}" + (
            f" ({max(s['ratio_ci'][0], 0):.2f}-{s['ratio_ci'][1]:.2f})" if s.get("ratio_ci") else "")
        p = "(reference)" if opt == bench.reference else p_text(s["p"]) + (" *" if s["significant"] else "")
        lines.append(f"| {opt} | {lr} | {mean} | {ci} | {spread} | {seeds} | {ratio} | {p} |")
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
    what = "mean final validation loss over the search seeds" if len(bench.search_seeds) > 1 else \
        "final validation loss"
    lr = "lr" if bench.search_roles == "main" else "lr scale"
    lines = [f"| optimizer | default {lr} | {what} per {lr} (best in bold) |", "| --- | ---: | --- |"]
    for opt, s in searched.items():
        cells = [(f"**{lr_text(lr)}: {loss_text(x)}**" if lr == s["best"] else f"{lr_text(lr)}: {loss_text(x)}")
                 for lr, x in s["losses"].items()]
        lines.append(f"| {opt} | {lr_text(s['default'])} | {', '.join(cells)} |")
    return lines


def headline(bench: BenchmarkSpec, scores: dict, target: float) -> str:
    """One line: each optimizer's mean steps; a ratio to the reference only where the difference is significant
    (Welch's t-test over seeds at 1 - level), else 'not significantly different'."""
    parts = []
    for opt, s in scores.items():
        if s["mean"] is None:
            missing = any(r.how == "missing" for r in s["reaches"].values())
            parts.append(f"{opt} n/a (a run failed or is missing)" if missing else f"{opt} > {bench.largest}")
        elif opt == bench.reference or s["ratio"] is None:
            parts.append(f"{opt} {s['mean']:.0f}")
        elif s["p"] is None:
            parts.append(f"{opt} {s['mean']:.0f} ({s['ratio']:.2f}x {bench.reference}, no test: too few seeds or no spread)")
        elif s["significant"]:
            parts.append(f"{opt} {s['mean']:.0f} ({s['ratio']:.2f}x {bench.reference}, p {p_text(s['p'])})")
        else:
            parts.append(f"{opt} {s['mean']:.0f} (not significantly different from {bench.reference}, "
                         f"p {p_text(s['p'])})")
    return f"steps to val loss {target:.4f} ({bench.target}): " + ", ".join(parts)
