"""A sweep spec (TOML) and its grid: every combination of the axes' values is one planned run,
with a readable run id and its config overrides (see configs/sweeps/smoke.toml for every field)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from common.config_io import toml_value
from common.paths import REPO

SPEC_KEYS = ("name", "base", "gpus_per_run", "retries", "overrides", "axes", "extra", "plot")
LABEL = "label."  # an axis "label.<name>" names variants (its extras say what each is); it is no config key
SWEEP_OWNED_KEYS = ("log.dir", "log.run_id", "checkpoint.resume")


class SpecError(ValueError):
    """A sweep spec that cannot be planned; the message names the offending key."""


@dataclass(frozen=True)
class Axis:
    """One swept config key: a list of values, or (with `by`) a list per value of an earlier axis,
    e.g. learning rates per optimizer."""

    key: str
    values: tuple = ()
    by: str | None = None
    per_value: dict = field(default_factory=dict)  # format_value(value of `by`) -> tuple of values

    def values_for(self, assigned: dict) -> tuple:
        """This axis's values, given the values already chosen for the axes before it."""
        if self.by is None:
            return self.values
        key = format_value(assigned[self.by])
        if key not in self.per_value:
            raise SpecError(f"axes.{self.key}: no values for {self.by} = {key} (have: {', '.join(self.per_value)})")
        return self.per_value[key]


@dataclass(frozen=True)
class PlotSpec:
    """Which axes the figure uses; every other axis (seeds) is averaged over."""

    x: str = "optim.lr"
    curves: str = "model.width"
    panels: str = "optim.name"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: str  # the base config, as written in the spec (relative to the repository root)
    axes: tuple[Axis, ...]
    overrides: dict = field(default_factory=dict)  # dotted key -> value, for every run
    extra: dict = field(default_factory=dict)  # axis key -> format_value(value) -> {dotted key: value}
    gpus_per_run: int = 1
    retries: int = 1  # a failed run (not a config error) is started again up to this many times
    plot: PlotSpec = PlotSpec()

    @property
    def base_path(self) -> Path:
        path = Path(self.base)
        return path if path.is_absolute() else REPO / path


def format_value(value) -> str:
    """An axis value as text: in run ids, extra-table keys and the CSV (floats exactly, via repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"width": 64}} -> {"model.width": 64}. A table with a `by` key is a value
    (a dependent axis), so it is kept whole."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "by" not in value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def read_toml(path: str | Path, keys) -> dict:
    """A spec file's TOML tables, refusing keys not in `keys`; errors name the file (SpecError)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(keys)})")
    return raw


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec (TOML); see configs/sweeps/smoke.toml for every field."""
    path = Path(path)
    raw = read_toml(path, SPEC_KEYS)
    name = str(raw.get("name", path.stem))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpecError(f"name = {name!r}: use letters, digits, '_', '-' and '.' (it names a folder)")
    if "base" not in raw:
        raise SpecError(f"{path}: no `base` (the config file every run starts from)")
    axes = parse_axes(raw.get("axes", {}))
    spec = SweepSpec(
        name=name, base=raw["base"], axes=axes, overrides=flatten(raw.get("overrides", {})),
        extra=parse_extra(raw.get("extra", {}), axes), gpus_per_run=int(raw.get("gpus_per_run", 1)),
        retries=int(raw.get("retries", SweepSpec.retries)), plot=parse_plot(raw.get("plot", {})),
    )
    check_spec(spec)
    return spec


def parse_axes(tree: dict) -> tuple[Axis, ...]:
    """The [axes] table, in the order written: `key = [values]` or `key = {by = "other", a = [...], b = [...]}`."""
    axes = []
    for key, value in flatten(tree).items():
        if isinstance(value, list):
            axis = Axis(key, tuple(value))
        elif isinstance(value, dict):
            by = value["by"]
            per_value = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in value.items() if k != "by"}
            if by not in [a.key for a in axes]:
                raise SpecError(f"axes.{key}: by = {by!r} must name an axis listed before it")
            axis = Axis(key, by=by, per_value=per_value)
        else:
            raise SpecError(f"axes.{key}: expected a list of values or a table with `by`, got {value!r}")
        lists = [axis.values] if axis.by is None else list(axis.per_value.values())
        if not all(lists):
            raise SpecError(f"axes.{key}: an empty list of values")
        axes.append(axis)
    if not axes:
        raise SpecError("[axes] is empty: a sweep needs at least one axis")
    return tuple(axes)


def parse_plot(table: dict) -> PlotSpec:
    valid = list(PlotSpec.__dataclass_fields__)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise SpecError(f"plot: unknown key(s) {', '.join(unknown)} (valid: {', '.join(valid)})")
    return PlotSpec(**table)


def parse_extra(tree: dict, axes: tuple[Axis, ...]) -> dict:
    """[extra."axis.key"] tables: axis value -> {dotted key: value} of further overrides."""
    keys = [a.key for a in axes]
    extra = {}
    for axis_key, table in tree.items():
        if axis_key not in keys:
            raise SpecError(f"extra.{axis_key}: not an axis (axes: {', '.join(keys)}); "
                            f'quote dotted axis keys: [extra."model.width"]')
        extra[axis_key] = {str(value): flatten(over) for value, over in table.items()}
    return extra


def check_spec(spec: SweepSpec) -> None:
    """Combinations that cannot work: keys set twice, keys the sweep owns, plot axes that don't exist."""
    keys = [a.key for a in spec.axes]
    if len(set(keys)) != len(keys):
        raise SpecError(f"an axis is listed twice: {keys}")
    for key in (*spec.overrides, *(k for per in spec.extra.values() for over in per.values() for k in over)):
        if key in SWEEP_OWNED_KEYS:
            raise SpecError(f"{key} is set by the sweep for each run; remove it from the spec")
        if key in keys:
            raise SpecError(f"{key} is an axis and also a fixed or extra override; keep one")
    if spec.gpus_per_run < 1:
        raise SpecError(f"gpus_per_run must be >= 1, got {spec.gpus_per_run}")
    if spec.retries < 0:
        raise SpecError(f"retries must be >= 0, got {spec.retries}")
    for key in keys:
        if key.startswith(LABEL) and key not in spec.extra:
            raise SpecError(f"axes.{key}: a label axis needs [extra.\"{key}\"] saying what each of its values sets")
    if spec.plot.x not in keys:
        raise SpecError(f"plot.x = {spec.plot.x!r} is not an axis (axes: {', '.join(keys)})")


# ----------------------------------------------------------------------------------------------
# The plan: one run per combination of axis values


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    values: dict  # axis key -> value, in axis order
    overrides: tuple[str, ...]  # --key=value: fixed overrides, axis values, extras


def plan_runs(spec: SweepSpec) -> list[PlannedRun]:
    """Every combination of axis values (the first axis varies slowest), with its overrides."""
    combos = [{}]
    for axis in spec.axes:
        combos = [{**c, axis.key: v} for c in combos for v in axis.values_for(c)]
    names = short_names([a.key for a in spec.axes])
    runs = [PlannedRun(run_id(values, names), values, run_overrides(spec, values)) for values in combos]
    seen = {}
    for run in runs:
        if run.run_id in seen:
            raise SpecError(f"two runs get the id {run.run_id}: {seen[run.run_id]} and {run.values} (repeated values?)")
        seen[run.run_id] = run.values
    return runs


def short_names(keys: list[str]) -> dict:
    """Each key's last part ('optim.lr' -> 'lr'), or the whole key where last parts clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last, strict=True)}


def run_id(values: dict, names: dict) -> str:
    """A readable, filesystem-safe id from the axis values: 'name-muon_width-256_lr-0.05_seed-0'."""
    parts = [f"{names[k]}-{format_value(v)}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", "_".join(parts))


def run_overrides(spec: SweepSpec, values: dict) -> tuple[str, ...]:
    """The run's overrides: fixed ones, then axis values (not labels), then the extras of its axis values."""
    merged = dict(spec.overrides)
    merged.update({k: v for k, v in values.items() if not k.startswith(LABEL)})
    for key, value in values.items():
        merged.update(spec.extra.get(key, {}).get(format_value(value), {}))
    return tuple(f"--{k}={toml_value(v)}" for k, v in merged.items())
