"""What an optimizer declares to the registry (optimizers/registry.py), next to its class.

    SPEC = OptimizerSpec(name="muon", lr=LR, settings=MuonConfig, build=build, about="...")

- `settings`: a frozen dataclass whose fields are the config keys the optimizer accepts and whose
  defaults are its defaults, the four parameter-role tables included (`Role`); its `check()`
  raises OptionError for values that cannot work. The optimizer class takes its own defaults from
  the same dataclass, so class and config defaults are the same numbers.
- `lr`: the default of `optim.lr`, the main learning rate (the one a sweep varies).
- `build(groups, settings, device)`: the optimizer for one param group per role (made by
  registry.build_optimizer, each with its role, lr, weight_decay, norm and scale).

In a config file:

    [optim]                  name = a registry key, lr = the main learning rate
    [optim.<name>]           that optimizer's settings
    [optim.<name>.<role>]    how one role is trained: norm, lr, scale, weight_decay

Only the chosen optimizer's tables are used; a config may hold tables for several (a base config
for Muon, a variant that switches to Scion), and every table is checked for typos.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from common.errors import did_you_mean
from model.roles import ROLES
from optimizers.norms import NORMS
from optimizers.orthogonalize import BACKENDS, METHODS

ADAMW = "adamw"  # a role "norm" that means: an AdamW step instead of a steepest step in a norm
MATRIX_NORMS = tuple(name for name, norm in NORMS.items() if norm.matrix_only)


class OptionError(ValueError):
    """A setting that cannot work. `key` is relative to the optimizer's table ("momentum",
    "hidden.norm"); the config loader prefixes it with "optim.<name>."."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


@dataclass(frozen=True)
class Role:
    """How one parameter role is trained."""

    norm: str  # a NORMS key (a steepest step in that norm), or "adamw"
    lr: float | None = None  # absolute learning rate; None: follows optim.lr
    scale: float = 1.0  # radius / update scale (Scion's rho)
    weight_decay: float = 0.0  # decoupled weight decay λ: W <- (1 − lr·λ)·W before the step


def group_defaults(settings: type, lr: float, given: dict, **group_keys) -> dict:
    """An optimizer class's param-group defaults: `lr`, the keys only groups have (`group_keys`, e.g.
    weight_decay) and the settings dataclass's group fields with its defaults, each overridden by `given`
    (the class's keyword arguments); a name that is none of these raises TypeError, as a function would."""
    defaults = {"lr": lr, **group_keys, **settings().group_settings()}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected argument(s) {', '.join(unknown)}; {settings.__name__} groups take "
                        f"{', '.join(sorted(defaults))}")
    return {**defaults, **given}


def role_lr(main_lr: float, role: Role) -> float:
    """The one place a role's learning rate is resolved: its own, or the main one."""
    return main_lr if role.lr is None else role.lr


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    about: str  # one line: what it does and in which norm
    lr: float  # default optim.lr
    settings: type  # frozen dataclass (OptimizerSettings): accepted keys and their defaults
    build: Callable  # build(groups, settings, device) -> torch.optim.Optimizer


class OptimizerSettings:
    """Base of every optimizer's settings dataclass (which declares the fields, roles included). The
    dataclass is the one place a default is written: the optimizer class takes its defaults from it
    (`group_defaults`), `build` passes it on whole (`group_settings`)."""

    role_norms: ClassVar[dict[str, tuple[str, ...]]] = {}  # per role, the norms it can be trained in
    role_rule: ClassVar[str] = ""  # why, for the error message
    not_group_keys: ClassVar[tuple[str, ...]] = ()  # fields the trainer uses (schedules), not the param groups

    def roles(self) -> dict[str, Role]:
        return {role: getattr(self, role) for role in ROLES}

    def group_settings(self) -> dict:
        """The fields every param group carries (its own copy, which a group may override): all but the
        roles and `not_group_keys`."""
        skip = {*ROLES, *self.not_group_keys}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def check(self) -> None:
        """Raise OptionError for a value that cannot work (subclasses add their own checks)."""
        check_roles(self.roles(), self.role_norms, self.role_rule)

    def momentum_at(self, step: int) -> float | None:
        """The momentum for `step` while it warms up, or None (the optimizer keeps its own)."""
        return None


class MomentumWarmup:
    """Mixin for settings with fields `momentum`, `momentum_warmup_from` and `momentum_warmup_steps`:
    the momentum ramps linearly from `momentum_warmup_from` to `momentum` over the first steps (the
    trainer sets each group's momentum; the warm-up fields are not group keys)."""

    not_group_keys: ClassVar[tuple[str, ...]] = ("momentum_warmup_from", "momentum_warmup_steps")

    def momentum_at(self, step: int) -> float | None:
        if not self.momentum_warmup_steps:
            return None
        frac = min(step / self.momentum_warmup_steps, 1.0)
        return (1 - frac) * self.momentum_warmup_from + frac * self.momentum

    def check_momentum(self) -> None:
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_nonnegative("momentum_warmup_steps", self.momentum_warmup_steps)
        if self.momentum_warmup_steps:
            if self.momentum_warmup_from is None:
                raise OptionError("momentum_warmup_steps", "momentum_warmup_steps > 0 needs momentum_warmup_from "
                                  "(the momentum it ramps up from)")
            check_range("momentum_warmup_from", self.momentum_warmup_from, 0.0, 1.0)


class Orthogonalizes:
    """Mixin for settings with fields `orthogonalize` (a METHODS key), `ns_steps` (0: the method's
    default) and `backend` (auto | torch | triton): how the spectral direction U Vᵀ is computed."""

    def check_orthogonalization(self) -> None:
        check_choice("orthogonalize", self.orthogonalize, METHODS)
        check_nonnegative("ns_steps", self.ns_steps)
        check_choice("backend", self.backend, BACKENDS)


# ----------------------------------------------------------------------------------------------
# Checks: each raises OptionError naming the key


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise OptionError(key, f"{value!r} is not one of {', '.join(map(repr, choices))}{did_you_mean(value, choices)}")


def check_positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise OptionError(key, f"must be a positive finite number, got {value}")


def check_nonnegative(key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise OptionError(key, f"must be a finite number >= 0, got {value}")


def check_range(key: str, value: float, lo: float, hi: float) -> None:
    """lo <= value < hi."""
    if not (lo <= value < hi):
        raise OptionError(key, f"must be in [{lo:g}, {hi:g}), got {value}")


def check_roles(roles: dict[str, Role], role_norms: dict[str, tuple[str, ...]], rule: str = "") -> None:
    """Every role: a norm the optimizer accepts for it (vector norms only for scalars), and a
    positive lr and scale, a non-negative weight decay."""
    for name, role in roles.items():
        allowed = role_norms.get(name, (*NORMS, ADAMW))
        if name == "scalar":
            allowed = tuple(n for n in allowed if n not in MATRIX_NORMS)
        if role.norm not in allowed:
            if name == "scalar" and role.norm in MATRIX_NORMS:
                why = "needs matrices, but role 'scalar' holds vectors and scalars"
            else:
                why = rule or f"is not a norm this optimizer trains role {name!r} in"
            raise OptionError(f"{name}.norm", f"{role.norm!r} {why}; choose from {', '.join(map(repr, allowed))}"
                                              f"{did_you_mean(role.norm, allowed)}")
        if role.lr is not None:
            check_positive(f"{name}.lr", role.lr)
        check_positive(f"{name}.scale", role.scale)
        check_nonnegative(f"{name}.weight_decay", role.weight_decay)
