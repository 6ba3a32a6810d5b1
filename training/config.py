"""Run configuration: frozen dataclasses, TOML files and dotted command-line overrides.

    cfg = load_config("configs/smoke.toml", ["--optim.lr=0.02", "--model.depth=6"])

Every key of a TOML file or override must name a field below; a typo fails before any compute
with the closest valid key. `validate(cfg, world_size)` checks the combinations that cannot work
(width not divisible by heads, a batch that does not split across ranks, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending key."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50257  # real vocabulary; embeddings and head are padded to `vocab_multiple`
    vocab_multiple: int = 128
    width: int = 768  # residual stream dimension
    depth: int = 12  # number of transformer blocks
    heads: int = 6
    head_dim: int = 128
    mlp_ratio: int = 4
    seq_len: int = 1024  # training sequence length (tokens per row)
    eot_token: int = 50256  # document separator: attention never crosses it
    value_embeds: int = 0  # number of value-embedding tables, used by the first and last layers
    skip_connections: bool = False  # U-net style skips from encoder to decoder half, learned weights
    x0_mix: bool = False  # each block mixes the normalized embedding x0 back in with learned weights
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0 disables
    attn_scale: float = 0.0  # attention logit scale; 0 means 1/sqrt(head_dim)
    rope_base: float = 10000.0
    rope_fraction: float = 1.0  # fraction of each head's dims that rotate (0.5 = half-truncated RoPE)
    no_attention_layers: tuple[int, ...] = ()  # blocks without attention (MLP only)
    window: int = 0  # sliding-window size in tokens; 0 = full causal attention
    window_pattern: str = ""  # per block 'L' (window) or 'S' (window // 2); empty = all 'L'
    attention: str = "auto"  # "auto" (flex on CUDA, sdpa elsewhere) | "flex" | "sdpa"
    compile: bool = True  # torch.compile the model (CUDA only)
    bf16: bool = True  # bf16 autocast (CUDA only); fp32 on CPU
    dtype: str = "float32"  # parameter dtype; "float64" is for numerical checks on CPU

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m


@dataclass(frozen=True)
class DataConfig:
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"
    batch_tokens: int = 8 * 48 * 1024  # global tokens per optimizer step, all ranks together
    micro_batch_size: int = 1  # rows per rank per forward/backward
    align_to_docs: bool = False  # start every row at a document start
    shuffle_shards: bool = False
    synthetic: bool = False  # generate learnable synthetic shards into `synthetic_dir` on first use
    synthetic_dir: str = "data/synthetic"  # shards go to a subfolder named after their parameters
    synthetic_seed: int = 0  # the Markov chain and its samples (independent of the training seed)
    synthetic_train_tokens: int = 4_000_000
    synthetic_val_tokens: int = 262_144


@dataclass(frozen=True)
class RoleConfig:
    """How one parameter role is trained; unset values come from optimizers/defaults.py."""

    norm: str | None = None  # a NORMS key (steepest step in that norm), or "adamw"
    lr: float | None = None  # absolute learning rate (unset: the optimizer's default for the role)
    scale: float | None = None  # radius / update scale (Scion's rho)
    weight_decay: float | None = None


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer. Unset (None) values take optimizer-specific defaults when the config loads."""

    name: str = "muon"  # "muon" | "scion" | "adamw" | "signum"
    lr: float | None = None  # main learning rate: hidden matrices (muon, adamw, signum), every role (scion)
    momentum: float | None = None  # beta of the momentum average (Scion's alpha is 1 - beta)
    nesterov: bool | None = None
    momentum_warmup_from: float | None = None  # momentum ramps linearly from this ...
    momentum_warmup_steps: int | None = None  # ... to `momentum` over these steps (0: no warm-up)
    orthogonalize: str = "newton_schulz"  # newton_schulz | polar_express | cubic | modular_quintic | svd
    ns_steps: int = 0  # iterations of the orthogonalization; 0 = the method's default
    backend: str = "auto"  # orthogonalization kernels: auto (Triton on CUDA) | torch | triton
    shape_scale: str = "muon"  # Muon's update scale: muon max(1,m/n)^.5 | spectral sqrt(m/n) | adamw .2sqrt(max)
    constrained: bool = True  # Scion: SCG (stay in the norm ball) or uSCG
    light: bool = False  # Scion: keep the momentum in p.grad (no optimizer buffer)
    scion_init: bool = False  # Scion: re-initialize every parameter on its norm sphere x radius
    adam_betas: tuple[float, float] | None = None
    adam_eps: float | None = None
    embed: RoleConfig = field(default_factory=RoleConfig)
    hidden: RoleConfig = field(default_factory=RoleConfig)
    head: RoleConfig = field(default_factory=RoleConfig)
    scalar: RoleConfig = field(default_factory=RoleConfig)


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = 1770
    warmup_steps: int = 0  # linear lr warmup from 0
    cooldown_frac: float = 0.4  # last fraction of training decays linearly ...
    final_lr_frac: float = 0.1  # ... to this fraction of the peak lr
    window_warmup: bool = True  # grow the attention window linearly from 128 tokens to model.window


@dataclass(frozen=True)
class EvalConfig:
    every: int = 125  # validate every this many steps (and always at the end); 0 = only at the end
    tokens: int = 10_485_760  # always the same first tokens of the validation shards
    seq_len: int = 0  # 0 = model.seq_len
    batch_size: int = 1  # rows per rank


@dataclass(frozen=True)
class LogConfig:
    every: int = 25  # train-loss log line every this many steps
    dir: str = "runs"  # parent folder of run directories
    run_id: str = ""  # default: <date>-<time>_<config name>_<random>
    wandb: bool = False
    wandb_project: str = "nanogpt-speedrun"


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


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.model.seq_len


# ----------------------------------------------------------------------------------------------
# Building a Config from nested dicts (TOML) and dotted overrides


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value, tp, key: str):
    """Convert a TOML value (or an override string parsed as TOML) to the field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # `X | None`: TOML has no null, so a value is an X
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner, key)
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
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        inner = args[0].__name__ + ", ..." if args[-1] is Ellipsis else ", ".join(a.__name__ for a in args)
        return f"a list [{inner}]"
    return tp.__name__


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], [v.split(".")[-1] for v in valid], n=1)
    hint = ""
    if close:
        hint = f"; did you mean '{next(v for v in valid if v.split('.')[-1] == close[0])}'?"
    return ConfigError(f"unknown config key '{key}'{hint} (valid keys: {', '.join(valid)})")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = prefix + key
        if key not in fields:
            raise _unknown_key(full, [prefix + k for k in fields])
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a [{full}] table, got {value!r}")
            kwargs[key] = _build(tp, value, full + ".")
        else:
            if isinstance(value, dict):
                raise ConfigError(f"{full}: expected {_type_name(tp)}, got a table")
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _parse_value(text: str):
    """An override's value is read as TOML (numbers, booleans, lists, quoted strings); a bare word
    that is not valid TOML is taken as a string, so `--optim.name=adamw` works unquoted."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict:
    """`["--optim.lr=0.02", "--model.depth", "6"]` -> {"optim": {"lr": 0.02}, "model": {"depth": 6}}."""
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
        node[parts[-1]] = _parse_value(text)
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_toml(path: Path, seen: tuple = ()) -> dict:
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
    return _merge(_read_toml(path.parent / base, (*seen, path.resolve())), values)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config file (or none, for the defaults), apply dotted overrides, and fill the
    optimizer's unset values from its defaults."""
    values = _read_toml(Path(path)) if path is not None else {}
    values = _merge(values, parse_overrides(overrides or []))
    return resolve_optim_defaults(_build(Config, values))


def resolve_optim_defaults(cfg: Config) -> Config:
    """Fill unset [optim] values from optimizers/defaults.py for the chosen optimizer. A role's lr
    stays unset when it follows optim.lr, so that overriding optim.lr moves it."""
    from optimizers.defaults import DEFAULTS, ROLES

    o = cfg.optim
    if o.name not in DEFAULTS:
        return cfg  # validate() names the valid choices
    d = DEFAULTS[o.name]
    top = {k: d[k] for k in ("lr", "momentum", "nesterov", "momentum_warmup_from", "momentum_warmup_steps",
                             "adam_betas", "adam_eps") if getattr(o, k) is None}
    for role in ROLES:
        rc, rd = getattr(o, role), d["roles"][role]
        filled = {k: rd[k] for k in ("norm", "lr", "scale", "weight_decay") if getattr(rc, k) is None}
        top[role] = dataclasses.replace(rc, **filled)
    return dataclasses.replace(cfg, optim=dataclasses.replace(o, **top))


def replace(cfg: Config, **sections) -> Config:
    """`replace(cfg, optim={"lr": 0.1})`: a copy with some fields of some sections changed."""
    changes = {}
    for name, fields in sections.items():
        section = getattr(cfg, name)
        changes[name] = dataclasses.replace(section, **fields) if isinstance(fields, dict) else fields
    return dataclasses.replace(cfg, **changes)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The config as TOML; `load_config` of the result gives back an equal Config. Unset (None)
    values are left out (TOML has no null)."""
    top, sections = [], []

    def section(name: str, obj) -> None:
        lines, subsections = [f"[{name}]"], []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                subsections.append((f"{name}.{f.name}", value))
            elif value is not None:
                lines.append(f"{f.name} = {toml_value(value)}")
        sections.append("\n".join(lines))
        for sub_name, sub in subsections:
            section(sub_name, sub)

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            section(f.name, value)
        elif value is not None:
            top.append(f"{f.name} = {toml_value(value)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(sections) + "\n"


def toml_value(v) -> str:
    """A value as TOML text (the config writer, and overrides built by scripts/sweep.py)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


# ----------------------------------------------------------------------------------------------
# Combinations that cannot run


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _choice(key: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}{hint}")


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    """Forward/backward passes per rank per optimizer step."""
    rows = cfg.data.batch_tokens // cfg.model.seq_len
    return rows // (world_size * cfg.data.micro_batch_size)


def validate(cfg: Config, world_size: int = 1) -> None:
    """Raise ConfigError for any combination that cannot run on `world_size` processes."""
    m, d, o, s, e = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.eval
    _choice("device", cfg.device, ("auto", "cpu", "cuda"))
    _choice("model.attention", m.attention, ("auto", "flex", "sdpa"))
    _choice("model.dtype", m.dtype, ("float32", "float64"))
    for key in ("width", "depth", "heads", "head_dim", "mlp_ratio", "seq_len", "vocab_size", "vocab_multiple"):
        _check(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    _check(
        m.width % m.heads == 0,
        f"model.width ({m.width}) is not divisible by model.heads ({m.heads})",
    )
    _check(m.head_dim % 2 == 0, f"model.head_dim ({m.head_dim}) must be even for rotary embeddings")
    _check(0.0 < m.rope_fraction <= 1.0, f"model.rope_fraction must be in (0, 1], got {m.rope_fraction}")
    _check(0 <= m.eot_token < m.vocab_size, f"model.eot_token ({m.eot_token}) must be < model.vocab_size ({m.vocab_size})")
    _check(
        2 * m.value_embeds <= m.depth,
        f"model.value_embeds ({m.value_embeds}) needs model.depth >= {2 * m.value_embeds} "
        f"(each table feeds one of the first and one of the last blocks), got {m.depth}",
    )
    for i in m.no_attention_layers:
        _check(0 <= i < m.depth, f"model.no_attention_layers: block {i} does not exist (depth {m.depth})")
    _check(m.window >= 0, f"model.window must be >= 0, got {m.window}")
    if m.window_pattern:
        _check(
            len(m.window_pattern) == m.depth and set(m.window_pattern) <= {"L", "S"},
            f"model.window_pattern must be {m.depth} letters of 'L'/'S' (one per block), got {m.window_pattern!r}",
        )
        _check(m.window > 0, "model.window_pattern needs model.window > 0")
    _check(m.logit_softcap >= 0, f"model.logit_softcap must be >= 0, got {m.logit_softcap}")

    T = m.seq_len
    _check(d.micro_batch_size > 0, f"data.micro_batch_size must be positive, got {d.micro_batch_size}")
    per_step = world_size * d.micro_batch_size * T
    _check(
        d.batch_tokens > 0 and d.batch_tokens % per_step == 0,
        f"data.batch_tokens ({d.batch_tokens}) must be a positive multiple of world size ({world_size}) "
        f"x data.micro_batch_size ({d.micro_batch_size}) x model.seq_len ({T}) = {per_step}",
    )
    _check(s.steps > 0, f"schedule.steps must be positive, got {s.steps}")
    _check(0 <= s.warmup_steps <= s.steps, f"schedule.warmup_steps ({s.warmup_steps}) must be in [0, schedule.steps]")
    _check(0.0 <= s.cooldown_frac <= 1.0, f"schedule.cooldown_frac must be in [0, 1], got {s.cooldown_frac}")
    _check(0.0 <= s.final_lr_frac <= 1.0, f"schedule.final_lr_frac must be in [0, 1], got {s.final_lr_frac}")
    _check(
        s.warmup_steps + round(s.cooldown_frac * s.steps) <= s.steps,
        "schedule.warmup_steps + schedule.cooldown_frac * schedule.steps exceeds schedule.steps",
    )
    eval_rows = world_size * e.batch_size * cfg.eval_seq_len
    _check(e.batch_size > 0, f"eval.batch_size must be positive, got {e.batch_size}")
    _check(
        e.tokens > 0 and e.tokens % eval_rows == 0,
        f"eval.tokens ({e.tokens}) must be a positive multiple of world size ({world_size}) x eval.batch_size "
        f"({e.batch_size}) x eval sequence length ({cfg.eval_seq_len}) = {eval_rows}",
    )
    _check(e.every >= 0, f"eval.every must be >= 0, got {e.every}")
    _check(cfg.log.every > 0, f"log.every must be positive, got {cfg.log.every}")
    _check(cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0, got {cfg.checkpoint.every}")
    _check(cfg.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {cfg.checkpoint.keep}")
    _check(cfg.distributed.bucket_mb > 0, f"distributed.bucket_mb must be positive, got {cfg.distributed.bucket_mb}")
    _check(cfg.distributed.timeout_s > 0, f"distributed.timeout_s must be positive, got {cfg.distributed.timeout_s}")
    _validate_optim(o)
    if m.attention == "flex":
        _check(
            T % 128 == 0 and cfg.eval_seq_len % 128 == 0,
            f"model.attention = 'flex' needs model.seq_len ({T}) and the eval sequence length "
            f"({cfg.eval_seq_len}) to be multiples of the 128-token block size",
        )
    if d.synthetic:
        _check(m.vocab_size <= 65536, "data.synthetic needs model.vocab_size <= 65536 (uint16 shards)")


def _validate_optim(o: OptimConfig) -> None:
    from optimizers.defaults import MATRIX_NORMS, NORM_NAMES, OPTIMIZERS, ROLES
    from optimizers.muon import SHAPE_SCALES
    from optimizers.orthogonalize import BACKENDS, METHODS

    _choice("optim.name", o.name, OPTIMIZERS)
    _choice("optim.orthogonalize", o.orthogonalize, METHODS)
    _choice("optim.backend", o.backend, BACKENDS)
    _choice("optim.shape_scale", o.shape_scale, SHAPE_SCALES)
    _check(o.lr is not None and o.lr > 0, f"optim.lr must be positive, got {o.lr}")
    if o.momentum is not None:
        _check(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(o.ns_steps >= 0, f"optim.ns_steps must be >= 0 (0 = the method's default), got {o.ns_steps}")
    _check(not o.light or o.name == "scion", "optim.light (momentum kept in p.grad) is a Scion option")
    for role in ROLES:
        rc, key = getattr(o, role), f"optim.{role}"
        _choice(f"{key}.norm", rc.norm, (*NORM_NAMES, "adamw"))
        lr = o.lr if rc.lr is None else rc.lr
        _check(lr > 0, f"{key}.lr must be positive, got {lr}")
        _check(rc.scale > 0, f"{key}.scale must be positive, got {rc.scale}")
        _check(rc.weight_decay >= 0, f"{key}.weight_decay must be >= 0, got {rc.weight_decay}")
        if role == "scalar":
            _check(rc.norm not in MATRIX_NORMS,
                   f"{key}.norm = {rc.norm!r} needs matrices, but role 'scalar' holds vectors and scalars; "
                   f"use rms, sign, sign_fanin or euclidean")
        if o.name == "muon":
            want = "spectral" if role == "hidden" else "adamw"
            _check(rc.norm == want,
                   f"{key}.norm = {rc.norm!r}: Muon trains hidden matrices in the spectral norm and the other roles "
                   f"with its auxiliary AdamW, so it must be {want!r} (optim.name = 'scion' takes any norm per role)")
        elif o.name == "scion":
            _check(rc.norm != "adamw",
                   f"{key}.norm = 'adamw': Scion trains every role with a norm's LMO, and AdamW has none; "
                   f"choose one of {', '.join(NORM_NAMES)}")
            _check(not (o.constrained and rc.weight_decay),
                   f"{key}.weight_decay: constrained Scion (SCG) has no separate weight decay; its (1 - lr) "
                   f"shrinkage is the decay. Set optim.constrained = false for uSCG with weight decay")
        elif o.name == "adamw":
            _check(rc.norm == "adamw", f"{key}.norm = {rc.norm!r}: optim.name = 'adamw' trains every role with AdamW")
        elif o.name == "signum":
            _check(rc.norm == "sign", f"{key}.norm = {rc.norm!r}: optim.name = 'signum' is sign descent for every role")
