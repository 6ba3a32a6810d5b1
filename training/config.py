"""The run's configuration, assembled: every section (each package declares and checks its own), the
loader of TOML files with dotted overrides, and the checks of what cannot run together.

    cfg = load_config("configs/smoke.toml", ["--optim.lr=0.02", "--model.depth=6"])
    validate(cfg, world_size)

Sections: [model] model/config.py, [data] data/config.py, [optim] optimizers/config.py (+ each optimizer's
settings), [constraint] training/constrain.py, and below the run's own: [schedule], [eval], [log],
[checkpoint], [distributed]. Every key of a TOML file or override must name a field (a typo fails before
any compute with the closest valid key, common/config_io.py), and an override is read as the type of the
field it sets. `validate(cfg, world_size)` checks each section, then the combinations across sections
(a batch that does not split across ranks, a soft cap the optimizer's lr breaks, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from common.config_io import build, choice, merge, parse_overrides, read_toml, to_dict
from common.config_io import check as _check
from common.errors import ConfigError
from data.config import DataConfig
from model.config import ModelConfig
from optimizers.config import OptimConfig, default_optim
from training.constrain import ConstraintConfig, check_constraint
from training.schedule import interval_tokens


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = 1770  # optimizer steps; the lr, momentum and window schedules follow it
    warmup_steps: int = 0  # linear lr warmup from 0
    cooldown_frac: float = 0.4  # last fraction of training decays linearly ...
    final_lr_frac: float = 0.1  # ... to this fraction of the peak lr
    window_warmup: bool = True  # grow the attention window linearly from 128 tokens to model.window


@dataclass(frozen=True)
class EvalConfig:
    every: int = 125  # validate every this many steps (and always at the end); 0 = only at the end
    every_late: int = 0  # in the last `late_frac` of the steps validate every this many steps instead; 0 = off
    late_frac: float = 0.1  # the last fraction of the run in which eval.every_late applies
    at_start: bool = True  # also validate before the first step (when eval.every > 0)
    tokens: int = 10_485_760  # the final validation: always the same first tokens of the validation shards
    interval_tokens: int = 0  # the validations before the final one read the first this many (at most eval.tokens); 0 = all
    seq_len: int = 0  # 0 = model.seq_len
    batch_size: int = 0  # rows per rank per forward pass; 0 = as many as fit in EVAL_AUTO_TOKENS tokens
    target: float = 0.0  # report the first validation at or below this loss (steps_to_target); 0 = none


@dataclass(frozen=True)
class LogConfig:
    every: int = 25  # train-loss log line every this many steps
    dir: str = "runs"  # parent folder of run directories
    run_id: str = ""  # default: <date>-<time>_<config name>_<random>
    wandb: bool = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no account)
    wandb_project: str = "nanogpt-speedrun"  # its project


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # 0 = only at the end (and on Ctrl-C)
    keep: int = 2  # newest checkpoints kept per run
    resume: str = ""  # "" | "latest" | path to a checkpoint file or run directory
    final: bool = True  # write a checkpoint at the end of training


@dataclass(frozen=True)
class DistributedConfig:
    overlap: bool = True  # start gradient reductions during backward (hooks + async buckets)
    shard_optimizer: bool = True  # each rank orthogonalizes only the matrices it owns (Muon, Scion)
    bucket_mb: float = 25.0  # size of the all-reduce buckets of the other parameters
    timeout_s: float = 600.0  # a collective that waits longer fails with an error instead of hanging
    stop_grace_s: float = 20.0  # after SIGTERM/SIGINT, no step boundary for this long ends the process (failed)
    one_rank_group: bool = False  # one process: make a group of one and run every distributed path (the GPU check)


@dataclass(frozen=True)
class Config:
    name: str = "run"  # the run's name (a config file's own: its file name); run ids start with it
    seed: int = 0  # model initialization and every other random draw of the run (data order: data.shuffle_shards)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=default_optim)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)

    @property
    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.model.seq_len


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config file (or none, for the defaults) and apply dotted overrides; whatever is
    left unset has its default (the chosen optimizer's, for [optim]). A file's top-level
    `base = "other.toml"` (relative to it) is read first."""
    values = read_toml(Path(path)) if path is not None else {}
    return build(Config(), merge(values, parse_overrides(overrides or [])))


def validate(cfg: Config, world_size: int = 1) -> None:
    """Raise ConfigError for any combination that cannot run on `world_size` processes."""
    choice("device", cfg.device, ("auto", "cpu", "cuda"))
    _check_finite(cfg)
    cfg.model.check()
    cfg.data.check(cfg.name)
    _validate_batches(cfg, world_size)
    _validate_schedule(cfg.schedule)
    cfg.optim.check()
    check_constraint(cfg)
    _check(cfg.log.every > 0, f"log.every must be positive, got {cfg.log.every}")
    _check_run_id(cfg.log.run_id)
    _check(cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0, got {cfg.checkpoint.every}")
    _check(cfg.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {cfg.checkpoint.keep}")
    _check(cfg.distributed.bucket_mb > 0, f"distributed.bucket_mb must be positive, got {cfg.distributed.bucket_mb}")
    _check(cfg.distributed.timeout_s > 0, f"distributed.timeout_s must be positive, got {cfg.distributed.timeout_s}")
    _check(cfg.distributed.stop_grace_s > 0,
           f"distributed.stop_grace_s must be positive, got {cfg.distributed.stop_grace_s}")
    _check(not cfg.data.synthetic or cfg.model.vocab_size <= 65536,
           "data.synthetic needs model.vocab_size <= 65536 (uint16 shards)")


def _check_run_id(run_id: str) -> None:
    """A run id names one folder inside log.dir: no path separators, not '.' or '..', no leading dot."""
    _check(
        "/" not in run_id and "\\" not in run_id and not run_id.startswith(".") and run_id.strip() == run_id,
        f"log.run_id = {run_id!r} must be a plain folder name (no '/', no leading '.', no surrounding spaces): "
        f"runs go to log.dir/<run_id>; choose the parent folder with log.dir",
    )


def _check_finite(cfg: Config) -> None:
    """No number in a config may be inf or nan (TOML can spell both)."""

    def walk(table: dict, prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{prefix}{key} must be a finite number, got {value}")

    walk(to_dict(cfg), "")


def _validate_batches(cfg: Config, world_size: int) -> None:
    m, d, e = cfg.model, cfg.data, cfg.eval
    per_step = world_size * d.micro_batch_size * m.seq_len
    _check(
        d.batch_tokens > 0 and d.batch_tokens % per_step == 0,
        f"data.batch_tokens ({d.batch_tokens}) must be a positive multiple of world size ({world_size}) "
        f"x data.micro_batch_size ({d.micro_batch_size}) x model.seq_len ({m.seq_len}) = {per_step}",
    )
    _check(e.batch_size >= 0, f"eval.batch_size must be >= 0 (0: automatic), got {e.batch_size}")
    batch = e.batch_size or 1
    eval_rows = world_size * batch * cfg.eval_seq_len
    for key, tokens in (("eval.tokens", e.tokens), ("eval.interval_tokens", interval_tokens(cfg))):
        _check(
            tokens > 0 and tokens % eval_rows == 0,
            f"{key} ({tokens}) must be a positive multiple of world size ({world_size}) x eval.batch_size "
            f"({batch}) x eval sequence length ({cfg.eval_seq_len}) = {eval_rows}",
        )
    _check(e.interval_tokens >= 0, f"eval.interval_tokens must be >= 0 (0: all of eval.tokens), got {e.interval_tokens}")
    _check(e.every >= 0, f"eval.every must be >= 0, got {e.every}")
    _check(e.every_late >= 0, f"eval.every_late must be >= 0, got {e.every_late}")
    _check(0.0 <= e.late_frac <= 1.0, f"eval.late_frac must be in [0, 1], got {e.late_frac}")
    _check(e.target >= 0, f"eval.target must be >= 0 (0: no target), got {e.target}")
    if m.attention == "flex":
        _check(
            m.seq_len % 128 == 0 and cfg.eval_seq_len % 128 == 0,
            f"model.attention = 'flex' needs model.seq_len ({m.seq_len}) and the eval sequence length "
            f"({cfg.eval_seq_len}) to be multiples of the 128-token block size",
        )
    _check(not m.fp8_head or (d.micro_batch_size * m.seq_len) % 16 == 0,
           f"model.fp8_head: the FP8 matmul needs the tokens of a micro-batch (data.micro_batch_size x model.seq_len "
           f"= {d.micro_batch_size * m.seq_len}) to be a multiple of 16")


def _validate_schedule(s: ScheduleConfig) -> None:
    _check(s.steps > 0, f"schedule.steps must be positive, got {s.steps}")
    _check(0 <= s.warmup_steps <= s.steps, f"schedule.warmup_steps ({s.warmup_steps}) must be in [0, schedule.steps]")
    _check(0.0 <= s.cooldown_frac <= 1.0, f"schedule.cooldown_frac must be in [0, 1], got {s.cooldown_frac}")
    _check(0.0 <= s.final_lr_frac <= 1.0, f"schedule.final_lr_frac must be in [0, 1], got {s.final_lr_frac}")
    _check(
        s.warmup_steps + round(s.cooldown_frac * s.steps) <= s.steps,
        "schedule.warmup_steps + schedule.cooldown_frac * schedule.steps exceeds schedule.steps",
    )
