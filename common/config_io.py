"""Frozen dataclasses from TOML files and dotted command-line overrides, and back to TOML: the machinery
under every config of the project (training/config.py assembles the run's; each package declares and
checks its own section).

    tree = merge(read_toml(path), parse_overrides(["--optim.lr=0.02", "--model.depth", "6"]))
    cfg = build(Config(), tree)                      # every key checked, every value of its field's type

Every key must name a field (a typo fails with the closest valid key); an override is read as the type
of the field it sets (`--log.run_id=nan` is the string "nan", `--optim.lr=1` the float 1.0). A
section whose layout is not one field per key (the [optim] table: a name picks the settings class)
gives its dataclass a classmethod `from_table(values, prefix)` and a method `to_table()`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
import types
import typing
from pathlib import Path

from common.errors import ConfigError, closest, did_you_mean


class Override(str):
    """An override's value as typed on the command line; it is parsed as the type of the field it
    sets (so `--log.run_id=nan` is the string "nan", `--optim.lr=1` the float 1.0)."""

    def parse(self, tp):
        if _is_str_type(tp) and not self.startswith(("'", '"')):
            return str(self)  # a bare word for a string field is the string itself
        try:
            return tomllib.loads(f"v = {self}")["v"]  # numbers, booleans, lists, quoted strings
        except tomllib.TOMLDecodeError:
            return str(self)  # not TOML: the type check names the field and what it expected


def _is_str_type(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return str in typing.get_args(tp)
    return tp is str


def coerce(value, tp, key: str):
    """Convert a TOML value (or an Override) to the field's type."""
    if isinstance(value, Override):
        value = value.parse(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # `X | None`: TOML has no null, so a value is an X
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(value, inner, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(coerce(v, a, key) for v, a in zip(value, args))
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        inner = args[0].__name__ + ", ..." if args[-1] is Ellipsis else ", ".join(a.__name__ for a in args)
        return f"a list [{inner}]"
    return tp.__name__


def unknown_key(key: str, valid: list[str], elsewhere: list[str] = ()) -> ConfigError:
    """Name the closest valid key (or, failing that, the closest key of `elsewhere`: other
    optimizers' settings)."""
    hint = ""
    for pool in (valid, elsewhere):
        full = {v.split(".")[-1]: v for v in reversed(pool)}  # last part -> its first key
        close = closest(key.split(".")[-1], full)
        if close is not None:
            hint = f"; did you mean {full[close]!r}?"
            break
    return ConfigError(f"unknown config key '{key}'{hint} (valid keys: {', '.join(valid)})")


def table(values, key: str) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a [{key}] table, got {values!r}")
    return values


def build(default, values: dict, prefix: str = ""):
    """A copy of the dataclass instance `default` with a TOML table applied: sub-tables go to the
    nested sections (whose current values are their defaults), and every value is checked against
    its field's type. Unknown keys fail with the closest valid key."""
    if hasattr(type(default), "from_table"):  # a section with its own layout
        return type(default).from_table(values, prefix)
    hints = typing.get_type_hints(type(default))
    names = [f.name for f in dataclasses.fields(default)]
    changes = {}
    for key, value in values.items():
        full = prefix + key
        if key not in names:
            raise unknown_key(full, [prefix + k for k in names])
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            changes[key] = build(current, table(value, full), full + ".")
        elif isinstance(value, dict):
            raise ConfigError(f"{full}: expected {_type_name(hints[key])}, got a table")
        else:
            changes[key] = coerce(value, hints[key], full)
    return dataclasses.replace(default, **changes)


def parse_overrides(args: list[str]) -> dict:
    """`["--optim.lr=0.02", "--model.depth", "6"]` -> {"optim": {"lr": "0.02"}, "model": {"depth": "6"}},
    each value an Override (parsed as its field's type when the config is built)."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}': overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, text = body.split("=", 1)
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"override '{arg}' has no value: use --{body}=VALUE")
            key, text = body, args[i + 1]
            i += 1
        i += 1
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}' conflicts with an earlier override")
        node[parts[-1]] = Override(text)
    return tree


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: Path, seen: tuple = ()) -> dict:
    """A config file's values; a top-level `base = "other.toml"` (relative to the file) is read
    first and the file's own values are merged over it."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular base chain")
    with path.open("rb") as f:
        try:
            values = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    values.setdefault("name", path.stem)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a path string, got {base!r}")
    return merge(read_toml(path.parent / base, (*seen, path.resolve())), values)


def to_dict(obj) -> dict:
    """The config as nested plain values, laid out as in the TOML file ([optim.<name>] for the
    optimizer's settings)."""
    if hasattr(obj, "to_table"):
        return obj.to_table()
    return {f.name: (to_dict(v) if dataclasses.is_dataclass(v) else v)
            for f in dataclasses.fields(obj) if (v := getattr(obj, f.name)) is not None}


def to_toml(cfg) -> str:
    """A config as TOML; `build` of the result (read back) gives an equal config. Unset (None)
    values are left out (TOML has no null)."""
    top, sections = [], []

    def section(name: str, table: dict) -> None:
        lines = [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        sections.append("\n".join(lines))
        for k, v in table.items():
            if isinstance(v, dict):
                section(f"{name}.{k}", v)

    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            section(key, value)
        else:
            top.append(f"{key} = {toml_value(value)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(sections) + "\n"


def toml_value(v) -> str:
    """A value as TOML text (the config writer, and overrides built by the sweep tools)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def choice(key: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}"
                          f"{did_you_mean(value, choices)}")


# ----------------------------------------------------------------------------------------------
# The key table of the docs, from the dataclasses' own comments

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#\n]*?(?:#\s*(.*))?$")


def field_notes(cls) -> dict[str, str]:
    """The comment on each field's line of a dataclass's source (`name: type = default  # note`), by field name,
    the notes of base classes included ("" where a field has none)."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            m = _FIELD_LINE.match(line)
            if m and m.group(1) in klass.__dataclass_fields__ and (m.group(2) or m.group(1) not in notes):
                notes[m.group(1)] = (m.group(2) or "").strip()
    return notes


def key_rows(obj, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default as TOML, note) for every leaf field of a config dataclass instance, nested
    sections in order; a section with its own layout (`to_table`) is left out (it documents itself)."""
    rows, notes = [], field_notes(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if hasattr(value, "to_table"):
            continue
        if dataclasses.is_dataclass(value):
            rows += key_rows(value, f"{prefix}{f.name}.")
        else:
            default = "unset" if value is None else toml_value(value)
            rows.append((prefix + f.name, default, notes.get(f.name, "")))
    return rows
