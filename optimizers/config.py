"""[optim]: which optimizer (a key of optimizers/registry.py), its main learning rate, and its settings,
read from [optim.<name>] (optimizers/<name>.py declares them with their defaults and checks).
Tables of other optimizers may be present; they are checked for typos and otherwise ignored."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.config_io import build, choice, coerce, table, to_dict, unknown_key
from common.errors import ConfigError
from optimizers.registry import OPTIMIZERS
from optimizers.spec import OptionError, role_lr


@dataclass(frozen=True)
class OptimConfig:
    """[optim] name = a registry key, lr = the main learning rate (the one a sweep varies; each role's own
    lr, where set, replaces it), and [optim.<name>] the optimizer's settings (its defaults when unset)."""

    name: str = "muon"
    lr: float | None = None  # None: the optimizer's default (filled in on load)
    settings: object = None  # the chosen optimizer's settings dataclass
    lr_scale: float = 1.0  # every role's peak lr (its own or the main one) times this

    def role_lr(self, role: str) -> float:
        """The peak learning rate of a parameter role: (its own, or the main one) x lr_scale."""
        return self.lr_scale * role_lr(self.lr, getattr(self.settings, role))

    def check(self) -> None:
        """optim.lr and optim.lr_scale here; everything else by the optimizer's own settings (their `check`)."""
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        if not 0 < self.lr_scale < float("inf"):
            raise ConfigError(f"optim.lr_scale must be positive and finite, got {self.lr_scale}")
        try:
            self.settings.check()
        except OptionError as e:
            raise ConfigError(f"optim.{self.name}.{e.key}: {e.message}") from None

    @classmethod
    def from_table(cls, values: dict, prefix: str) -> OptimConfig:
        """[optim]: `name` picks the optimizer, `lr` defaults to its own, and [optim.<name>] builds its
        settings; the tables of other optimizers are checked and dropped."""
        name = coerce(values.get("name", cls.name), str, prefix + "name")
        choice(prefix + "name", name, tuple(OPTIMIZERS))
        spec = OPTIMIZERS[name]
        lr = coerce(values["lr"], float, prefix + "lr") if "lr" in values else spec.lr
        lr_scale = coerce(values.get("lr_scale", cls.lr_scale), float, prefix + "lr_scale")
        settings = spec.settings()
        for key, value in values.items():
            if key in ("name", "lr", "lr_scale"):
                continue
            if key not in OPTIMIZERS:
                fields = {n: [f"{prefix}{n}.{f.name}" for f in dataclasses.fields(s.settings)]
                          for n, s in OPTIMIZERS.items()}
                valid = [prefix + "name", prefix + "lr", prefix + "lr_scale", *(prefix + k for k in OPTIMIZERS),
                         *fields[name]]
                raise unknown_key(prefix + key, valid, [k for n, ks in fields.items() if n != name for k in ks])
            built = build(OPTIMIZERS[key].settings(), table(value, prefix + key), f"{prefix}{key}.")
            if key == name:
                settings = built
        return cls(name, lr, settings, lr_scale)

    def to_table(self) -> dict:
        """As in a TOML file: name, lr and the [optim.<name>] table."""
        return {"name": self.name, "lr": self.lr, "lr_scale": self.lr_scale, self.name: to_dict(self.settings)}


def default_optim(name: str = "muon") -> OptimConfig:
    """An optimizer with all its defaults."""
    spec = OPTIMIZERS[name]
    return OptimConfig(name, spec.lr, spec.settings())
