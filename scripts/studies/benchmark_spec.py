"""A benchmark spec (configs/benchmarks/*.toml) and what follows from it alone: its checks, the target it
names, each optimizer's learning rates to search, and the sweep spec of a phase. The protocol:
scripts/studies/benchmark.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.paths import REPO
from optimizers.registry import OPTIMIZERS
from scripts.studies.runner import FINISHED
from scripts.studies.spec import Axis, PlotSpec, SpecError, SweepSpec, check_spec, flatten, plan_runs, read_toml
from training.config import load_config, validate

SPEC_KEYS = ("name", "base", "optimizers", "budgets", "seeds", "target", "reference", "search", "default_lr",
             "overrides", "extra", "slots", "gpus_per_run", "runs_per_gpu", "retries", "track", "alpha")


SEARCH_KEYS = ("grid", "refine", "seed", "seeds", "roles")
ROLES_SEARCHED = {"main": "optim.lr", "all": "optim.lr_scale"}  # search.roles -> the key the search varies


TARGET = re.compile(r"^(?P<opt>[A-Za-z0-9_]+)@(?P<budget>largest|\d+)(:(?P<how>mean|max))?$")


def plot_spec(bench: BenchmarkSpec) -> PlotSpec:
    return PlotSpec(x=bench.search_key, curves="schedule.steps", panels="optim.name")


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
    refine: bool | str = True  # then best x 2^(+-1/2); "beyond_noise": only where a midpoint could beat the best
                               # by more than the search's noise (scores.refine_worth)
    search_seeds: tuple[int, ...] = (0,)  # each lr of the search is scored by its mean final loss over these
    search_roles: str = "main"  # "main": optim.lr (roles with their own lr keep it); "all": optim.lr_scale
    default_lr: dict = field(default_factory=dict)  # optimizer -> the grid's centre
    overrides: dict = field(default_factory=dict)  # dotted key -> value, for every run
    extra: dict = field(default_factory=dict)  # optimizer -> {dotted key: value} for its runs only
    slots: int = 1  # runs at once without GPUs
    gpus_per_run: int = 1
    runs_per_gpu: int = 1  # runs packed onto each GPU (or group of gpus_per_run) at once
    retries: int = 1
    track: str = ""  # records/<track>/ for --record
    alpha: float = 0.05  # significance level of the tests against the reference; intervals at 1 - alpha

    @property
    def level(self) -> float:
        return 1.0 - self.alpha

    @property
    def search_seed(self) -> int:
        return self.search_seeds[0]

    @property
    def search_key(self) -> str:
        """The key the search varies: optim.lr, or optim.lr_scale (every role's lr together)."""
        return ROLES_SEARCHED[self.search_roles]

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
    if "seed" in search and "seeds" in search:
        raise SpecError("search: give `seeds` (a list) or `seed` (one), not both")
    search_seeds = tuple(_ints(search.get("seeds", [search.get("seed", seeds[0])]), "search.seeds"))
    bench = BenchmarkSpec(
        name=str(raw.get("name", path.stem)), base=str(raw["base"]), optimizers=tuple(raw["optimizers"]),
        budgets=tuple(sorted(_ints(raw["budgets"], "budgets"))), seeds=seeds, target=raw["target"],
        reference=str(raw.get("reference", "adamw")), grid=tuple(search.get("grid", BenchmarkSpec.grid)),
        refine=_refine(search.get("refine", True)), search_seeds=search_seeds,
        search_roles=str(search.get("roles", "main")),
        default_lr=dict(raw.get("default_lr", {})), overrides=flatten(raw.get("overrides", {})),
        extra={k: flatten(v) for k, v in raw.get("extra", {}).items()}, slots=int(raw.get("slots", 1)),
        gpus_per_run=int(raw.get("gpus_per_run", 1)), runs_per_gpu=int(raw.get("runs_per_gpu", 1)), retries=int(raw.get("retries", 1)),
        track=str(raw.get("track", "")), alpha=raw.get("alpha", 0.05),
    )
    check_benchmark(bench, explicit_reference="reference" in raw)
    return bench


def _refine(value) -> bool | str:
    if isinstance(value, bool) or value == "beyond_noise":
        return value
    raise SpecError(f"search.refine: {value!r} is not true, false or \"beyond_noise\"")


def _ints(values, key: str) -> list[int]:
    """A non-empty list of distinct whole numbers: positive (budgets) or non-negative (seeds)."""
    lowest = 0 if key.endswith("seeds") else 1
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
    if bench.slots < 1 or bench.gpus_per_run < 1 or bench.runs_per_gpu < 1 or bench.retries < 0:
        raise SpecError(f"slots ({bench.slots}), gpus_per_run ({bench.gpus_per_run}) and runs_per_gpu "
                        f"({bench.runs_per_gpu}) must be >= 1, "
                        f"retries ({bench.retries}) >= 0")
    if bench.search_roles not in ROLES_SEARCHED:
        raise SpecError(f"search.roles = {bench.search_roles!r}: expected 'main' (optim.lr) or 'all' (optim.lr_scale: "
                        "every role's lr together)")
    if isinstance(bench.alpha, bool) or not isinstance(bench.alpha, (int, float)) or not 0 < bench.alpha < 1:
        raise SpecError(f"alpha = {bench.alpha!r}: a significance level between 0 and 1 (e.g. 0.05)")
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
    """The search's first values: default lr x 2^k (search.roles = "main"), or lr scales 2^k ("all")."""
    centre = default_lr(bench, name) if bench.search_roles == "main" else 1.0
    return tuple(centre * 2.0 ** k for k in sorted(bench.grid))


def refine_lrs(best: float) -> tuple[float, ...]:
    """The midpoints in log space between the best lr and its neighbours on a grid in factors of 2."""
    return (best * 2.0 ** -0.5, best * 2.0 ** 0.5)


def phase_spec(bench: BenchmarkSpec, lrs: dict, budgets, seeds) -> SweepSpec:
    """One phase as a sweep over the benchmark's folder: lrs = {optimizer: its learning rates}."""
    opts = [o for o in bench.optimizers if lrs.get(o)]
    axes = (Axis("optim.name", tuple(opts)), Axis("schedule.steps", tuple(budgets)),
            Axis(bench.search_key, by="optim.name", per_value={o: tuple(lrs[o]) for o in opts}),
            Axis("seed", tuple(seeds)))
    main = {} if bench.search_roles == "main" else {o: {"optim.lr": default_lr(bench, o)} for o in opts}
    spec = SweepSpec(name=bench.name, base=bench.base, axes=axes, overrides=bench.overrides,
                     extra={"optim.name": {o: {**main.get(o, {}), **bench.extra.get(o, {})} for o in opts}},
                     gpus_per_run=bench.gpus_per_run, retries=bench.retries, plot=plot_spec(bench))
    check_spec(spec)
    return spec


def check_configs(bench: BenchmarkSpec, world_size: int = 1) -> None:
    """Every optimizer's run config is one the trainer accepts (before any compute); ConfigError names the key."""
    for name in bench.optimizers:
        centre = default_lr(bench, name) if bench.search_roles == "main" else 1.0
        spec = phase_spec(bench, {name: (centre,)}, (bench.largest,), (bench.search_seed,))
        for run in plan_runs(spec):
            validate(load_config(bench.base_path, list(run.overrides)), world_size=world_size)


def protocol_size(bench: BenchmarkSpec) -> dict:
    """Runs and training steps of the whole protocol (at most: refine = "beyond_noise" may skip refinements): the
    search (grid, then refine; every search seed) at the
    largest budget, and each optimizer's ladder (every budget x seed; its runs at the largest budget with a
    search seed are search runs already)."""
    n = len(bench.optimizers)
    search = n * (len(bench.grid) + (2 if bench.refine else 0)) * len(bench.search_seeds)
    ladder = n * len(bench.budgets) * len(bench.seeds)
    shared = n * len(set(bench.search_seeds) & set(bench.seeds))
    steps = (search - shared) * bench.largest + n * len(bench.seeds) * sum(bench.budgets)
    return {"runs": search + ladder - shared, "steps": steps}


def plan_summary(bench: BenchmarkSpec, at_once: int, rows: list[dict]) -> str:
    """The dry run's last line: the whole protocol's runs and steps, and the time left at the pace of the runs
    that finished (training time only; unknown before the first run), `at_once` runs at a time."""
    size = protocol_size(bench)
    done = list({r["run_id"]: r for r in rows if r["status"] in FINISHED and r.get("train_time_s") and r.get("steps")}
                .values())  # a run two phases share counts once
    steps_done = sum(r["steps"] for r in done)
    text = f"the whole protocol: {size['runs']} runs, {size['steps']:,} training steps; {len(done)} runs finished"
    if not done:
        return text + "; time: measured from the first finished run (none yet)"
    pace = sum(r["train_time_s"] for r in done) / steps_done
    left = max(size["steps"] - steps_done, 0) * pace / max(at_once, 1)
    return (text + f"; at their {1000 * pace:.0f} ms per step and {at_once} run(s) at once, about "
                   f"{left / 3600:.1f} h of training left")


def retarget(bench: BenchmarkSpec, data: Path | None = None, lrs_from: Path | None = None,
             target: float | str | None = None) -> BenchmarkSpec:
    """The same protocol on other shards and/or with learning rates found before, without editing the spec:

    data: a folder of shards written by data/shakespeare.py (`--text FILE --out DIR`, characters or GPT-2 BPE):
      its *_train_*.bin and *_val_*.bin, with the vocabulary size and separator of its documents.json;
    lrs_from: a benchmark.json whose search found each optimizer's best lr: those lrs are trained as given
      (search.grid = [0], no refinement), so the ranking is measured on text the lrs were not tuned on;
    the benchmark's name (its tables' title and the folder's default) becomes the spec's, then the data folder's
      name, then "given-lrs";
    target: a loss or a rule ("adamw@largest:max"). Without it, a spec's target loss becomes on other shards the
      reference's worst seed at the largest budget: a loss reached on one text says nothing on another."""
    changes, parts = {}, [bench.name]
    if target is not None:
        try:
            changes["target"] = float(target)
        except ValueError:
            changes["target"] = str(target)
    elif data is not None and not isinstance(bench.target, str) and bench.reference in bench.optimizers:
        changes["target"] = f"{bench.reference}@largest:max"
    if data is not None:
        changes["overrides"] = {**bench.overrides, **data_overrides(bench, Path(data))}
        parts.append(Path(data).name)
    if lrs_from is not None:
        changes.update(given_lrs(bench, Path(lrs_from)))
        parts.append("given-lrs")
    changes["name"] = "_".join(parts)
    bench = replace(bench, **changes)
    check_benchmark(bench, explicit_reference=False)
    return bench


def data_overrides(bench: BenchmarkSpec, folder: Path) -> dict:
    """The data keys of every run for a folder of data/shakespeare.py shards; SpecError says what is missing."""
    train, val, info = sorted(folder.glob("*_train_*.bin")), sorted(folder.glob("*_val_*.bin")), folder / "documents.json"
    if not train or not val or not info.is_file():
        raise SpecError(f"--data {folder}: expected *_train_*.bin, *_val_*.bin and documents.json, as "
                        f"`python -m data.shakespeare --text FILE --out {folder}` writes them")
    doc = json.loads(info.read_text())
    needed = int(bench.overrides.get("eval.tokens", 0))
    if needed and doc.get("val_tokens", 0) <= needed:
        raise SpecError(f"--data {folder}: its validation holds {doc.get('val_tokens')} tokens, the runs validate "
                        f"on eval.tokens = {needed}: prepare it with a larger --val-fraction (one document) or a "
                        "smaller --val-every")
    return {"data.synthetic": False, "data.train_files": str(folder / "*_train_*.bin"),
            "data.val_files": str(folder / "*_val_*.bin"), "model.vocab_size": int(doc["vocab_size"]),
            "model.eot_token": int(doc["separator_id"])}


def searched_lrs(bench: BenchmarkSpec, path: Path) -> dict:
    """{optimizer: the best lr of the search in a benchmark.json} for every optimizer of the spec."""
    try:
        search = json.loads(path.read_text())["search"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"--lrs-from {path}: not a benchmark.json with a search ({e})") from None
    missing = [o for o in bench.optimizers if not (search.get(o) or {}).get("best")]
    if missing:
        raise SpecError(f"--lrs-from {path}: no best lr for {', '.join(missing)}")
    return {o: float(search[o]["best"]) for o in bench.optimizers}


def given_lrs(bench: BenchmarkSpec, path: Path) -> dict:
    """The changes that train a benchmark.json's best values as given: its best lrs as [default_lr], or (a search
    of every role's lr together) its best lr scales as each optimizer's optim.lr_scale, with its default lrs."""
    best = searched_lrs(bench, path)
    changes = dict(grid=(0,), refine=False, search_roles="main")
    if json.loads(path.read_text()).get("search_key", "optim.lr") == "optim.lr":
        return {**changes, "default_lr": best}
    extra = {o: {**bench.extra.get(o, {}), "optim.lr_scale": best[o]} for o in bench.optimizers}
    return {**changes, "extra": {**bench.extra, **extra}}
