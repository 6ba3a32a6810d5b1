"""Run configuration: frozen dataclasses, TOML files and dotted command-line overrides.

    cfg = load_config("configs/smoke.toml", ["--optim.lr=0.02", "--model.depth=6"])

Every key of a TOML file or override must name a field below (or, under [optim.<name>], a
field of that optimizer's settings); a typo fails before any compute with the closest valid key,
and an override is read as the type of the field it sets. `validate(cfg, world_size)` checks the
combinations that cannot work (a batch that does not split across ranks, a norm an optimizer
cannot use, ...).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from common.errors import ConfigError, closest, did_you_mean


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
    window_blocks: bool = False  # the window counts whole 128-token key blocks, as the records do (model/masks.py)
    attention: str = "auto"  # "auto" (flex on CUDA, sdpa elsewhere) | "flex" | "sdpa"
    compile: bool = True  # torch.compile the model (on CUDA; on CPU only with compile_cpu)
    compile_cpu: bool = False  # compile on CPU too (inductor): the CPU proxy for compile problems (tests/test_compile.py)
    compile_warmup_steps: int = -1  # steps run and undone before the clock starts (compile, autotune); -1: 3 if compiling
    bf16: bool = True  # bf16 autocast (CUDA only); fp32 on CPU
    dtype: str = "float32"  # parameter dtype; "float64" is for numerical checks on CPU
    # Track 3 (modded-nanogpt's optimization benchmark: configs/track3_*.toml) switches these on:
    bias: bool = False  # every linear layer has a bias (q, k, v, attention out, MLP in and out, head)
    norm_gains: bool = False  # every RMSNorm but the QK-norm has a learned gain (2 per block, embedding, head)
    doc_masking: bool = True  # attention stays inside documents (split at eot_token); false: plain causal per row
    softcap_kind: str = "tanh"  # logit cap: "tanh" cap*tanh(z/cap) | "algebraic" cap*z/sqrt(z^2+cap^2)
    hidden_init: str = "uniform"  # q/k/v, MLP in: "uniform" std 0.5/sqrt(fan_in) | "normal" var 0.33/fan_in
    embed_bf16: bool = False  # store the token tables (embedding, value embeddings) in bfloat16
    fp8_head: bool = False  # the head's training matmuls in float8 with the record's scales (model/fp8.py; Hopper)
    loss_chunk: int = 8192  # head + cap + loss: at most this many tokens' full-vocabulary logits at once
    # The Lipschitz transformer (Newhouse et al. 2025; configs/lipschitz_*.toml; model/lipschitz.py) switches these:
    layer_norm: bool = True  # RMSNorm after the embedding, before attention, the MLP and the head; false: none
    qk_norm: bool = True  # RMSNorm of queries and keys inside attention
    activation: str = "relu2"  # MLP: "relu2" relu(x)^2 | "gelu_scaled" GELU(x)/1.1289 (1-Lipschitz)
    attn_scale_rule: str = "inv_sqrt_d"  # with attn_scale = 0: logits q.k/sqrt(head_dim) | "inv_d": q.k/head_dim
    attn_out_scale: float = 1.0  # the heads' output times this before the out projection (the paper's 1/3)
    residual: str = "add"  # "add" x + f(x) | "convex" (1 - a) x + a f(x) with a = residual_scale / (2 depth)
    residual_scale: float = 1.0

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
class OptimConfig:
    """[optim]: the optimizer (a key of optimizers/registry.py), its main learning rate, and its
    settings, read from [optim.<name>] (optimizers/<name>.py declares them with their defaults).
    Tables of other optimizers may be present; they are checked for typos and otherwise ignored."""

    name: str = "muon"
    lr: float | None = None  # the main learning rate; None: the optimizer's default (filled in on load)
    settings: object = None  # the chosen optimizer's settings dataclass (its defaults when unset)

    def role_lr(self, role: str) -> float:
        """The learning rate of a parameter role (its own, or the main one)."""
        from optimizers.spec import role_lr

        return role_lr(self.lr, getattr(self.settings, role))


def default_optim(name: str = "muon") -> OptimConfig:
    """An optimizer with all its defaults."""
    from optimizers.registry import OPTIMIZERS

    spec = OPTIMIZERS[name]
    return OptimConfig(name, spec.lr, spec.settings())


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
    every_late: int = 0  # in the last `late_frac` of the steps validate every this many steps instead; 0 = off
    late_frac: float = 0.1
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
    one_rank_group: bool = False  # one process: make a group of one and run every distributed path (the GPU check)


@dataclass(frozen=True)
class RoleConstraintConfig:
    """[constraint.embed], [constraint.head]: the constraint of that role (training/constrain.py)."""

    method: str = "none"  # head: as constraint.method; embed: "none" | "row_rms_cap" (each row's RMS <= max_norm)
    max_norm: float = 1.0  # head: beta, as constraint.max_norm; embed: the largest RMS of a row
    update_norm: float = 0.0  # head soft cap: as constraint.update_norm (0: automatic, Muon's hidden role only)


@dataclass(frozen=True)
class ConstraintConfig:
    """[constraint]: weight-norm constraints right after every optimizer step, on the hidden matrices (and,
    in their own tables, the embedding and the head), and the Lipschitz bound in the logs. Methods: see
    optimizers/constraints.py; how they run: training/constrain.py; the bound: model/lipschitz.py."""

    # hidden matrices: none | spectral_normalize | spectral_hammer | spectral_soft_cap | spectral_hard_cap | hyperball
    method: str = "none"
    max_norm: float = 1.0  # beta: bound on sigma_max (with shape_scaled: on the RMS->RMS norm sqrt(d_in/d_out) sigma_max)
    update_norm: float = 0.0  # soft cap: sigma of one update per unit lr, in max_norm's units; 0: auto (Muon)
    ns_overshoot: float = 1.2  # auto update_norm: Muon's shape scale x this (Newton-Schulz overshoots 1)
    shape_scaled: bool = False  # max_norm bounds the RMS->RMS norm (the paper's), not sigma_max itself
    power_iters: int = 16  # power iterations for a matrix seen the first time ...
    power_iters_warm: int = 2  # ... and afterwards, from the stored vector
    polish_steps: int = 3  # hard cap: modular-quintic steps after Polar Express's five
    skip_margin: float = 0.05  # hard cap: matrices with sigma <= (1 - margin) beta keep their bits
    dtype: str = "auto"  # soft / hard cap iterations: auto (bf16 on CUDA, fp32 else) | bfloat16 | float32 | float64
    backend: str = "auto"  # hard cap's polar / sign iterations: auto | torch | triton
    at_init: bool = True  # also constrain the initial weights (before step 1)
    log_bound: str = "auto"  # lipschitz_bound at validations: auto (when model/lipschitz.py covers it) | always | never
    embed: RoleConstraintConfig = field(default_factory=RoleConstraintConfig)
    head: RoleConstraintConfig = field(default_factory=RoleConstraintConfig)


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
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


# ----------------------------------------------------------------------------------------------
# Building a Config from nested dicts (TOML) and dotted overrides


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


def _coerce(value, tp, key: str):
    """Convert a TOML value (or an Override) to the field's type."""
    if isinstance(value, Override):
        value = value.parse(tp)
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


def _unknown_key(key: str, valid: list[str], elsewhere: list[str] = ()) -> ConfigError:
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


def _table(values, key: str) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a [{key}] table, got {values!r}")
    return values


def _build(default, values: dict, prefix: str = ""):
    """A copy of the dataclass instance `default` with a TOML table applied: sub-tables go to the
    nested sections (whose current values are their defaults), and every value is checked against
    its field's type. Unknown keys fail with the closest valid key."""
    if isinstance(default, OptimConfig):
        return _build_optim(values, prefix)
    hints = typing.get_type_hints(type(default))
    names = [f.name for f in dataclasses.fields(default)]
    changes = {}
    for key, value in values.items():
        full = prefix + key
        if key not in names:
            raise _unknown_key(full, [prefix + k for k in names])
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _build(current, _table(value, full), full + ".")
        elif isinstance(value, dict):
            raise ConfigError(f"{full}: expected {_type_name(hints[key])}, got a table")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(default, **changes)


def _build_optim(values: dict, prefix: str) -> OptimConfig:
    """[optim]: `name` picks the optimizer, `lr` defaults to its own, and [optim.<name>] builds its
    settings; the tables of other optimizers are checked and dropped."""
    from optimizers.registry import OPTIMIZERS

    name = _coerce(values.get("name", OptimConfig.name), str, prefix + "name")
    _choice(prefix + "name", name, tuple(OPTIMIZERS))
    spec = OPTIMIZERS[name]
    lr = _coerce(values["lr"], float, prefix + "lr") if "lr" in values else spec.lr
    settings = spec.settings()
    for key, value in values.items():
        if key in ("name", "lr"):
            continue
        if key not in OPTIMIZERS:
            fields = {n: [f"{prefix}{n}.{f.name}" for f in dataclasses.fields(s.settings)] for n, s in OPTIMIZERS.items()}
            valid = [prefix + "name", prefix + "lr", *(prefix + k for k in OPTIMIZERS), *fields[name]]
            raise _unknown_key(prefix + key, valid, [k for n, ks in fields.items() if n != name for k in ks])
        built = _build(OPTIMIZERS[key].settings(), _table(value, prefix + key), f"{prefix}{key}.")
        if key == name:
            settings = built
    return OptimConfig(name, lr, settings)


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
    """Read a TOML config file (or none, for the defaults) and apply dotted overrides; whatever is
    left unset has its default (the chosen optimizer's, for [optim])."""
    values = _read_toml(Path(path)) if path is not None else {}
    return _build(Config(), _merge(values, parse_overrides(overrides or [])))


def to_dict(obj) -> dict:
    """The config as nested plain values, laid out as in the TOML file ([optim.<name>] for the
    optimizer's settings)."""
    if isinstance(obj, OptimConfig):
        return {"name": obj.name, "lr": obj.lr, obj.name: to_dict(obj.settings)}
    return {f.name: (to_dict(v) if dataclasses.is_dataclass(v) else v)
            for f in dataclasses.fields(obj) if (v := getattr(obj, f.name)) is not None}


def to_toml(cfg: Config) -> str:
    """The config as TOML; `load_config` of the result gives back an equal Config. Unset (None)
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


# ----------------------------------------------------------------------------------------------
# Combinations that cannot run


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _choice(key: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}"
                          f"{did_you_mean(value, choices)}")


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    """Forward/backward passes per rank per optimizer step."""
    rows = cfg.data.batch_tokens // cfg.model.seq_len
    return rows // (world_size * cfg.data.micro_batch_size)


EVAL_AUTO_TOKENS = 16384  # eval.batch_size = 0: at most this many tokens per rank per forward pass (>= 1 row)


def eval_batch_size(cfg: Config, world_size: int) -> int:
    """Rows per rank per validation forward pass: eval.batch_size, or for 0 the largest number of rows
    that holds at most EVAL_AUTO_TOKENS tokens (at least one row) and divides the rows of both the
    final and the interval validation."""
    e = cfg.eval
    if e.batch_size:
        return e.batch_size
    per_rank = world_size * cfg.eval_seq_len
    rows = math.gcd(e.tokens // per_rank, interval_tokens(cfg) // per_rank)
    cap = max(1, EVAL_AUTO_TOKENS // cfg.eval_seq_len)
    return max(d for d in range(1, min(rows, cap) + 1) if rows % d == 0) if rows else 1


def interval_tokens(cfg: Config) -> int:
    """Tokens of the validations before the final one."""
    return min(cfg.eval.interval_tokens or cfg.eval.tokens, cfg.eval.tokens)


def eval_tokens(cfg: Config, step: int) -> int:
    """Validation tokens at `step`: all of eval.tokens at the end, the interval tokens before."""
    return cfg.eval.tokens if step >= cfg.schedule.steps else interval_tokens(cfg)


def eval_due(cfg: Config, step: int) -> bool:
    """Whether to validate after `step` steps: at the end; every eval.every steps (at step 0 too when
    eval.at_start); every eval.every_late steps in the last eval.late_frac of the run."""
    e, steps = cfg.eval, cfg.schedule.steps
    if step >= steps:
        return True
    if step == 0:
        return e.at_start and e.every > 0
    if e.every_late and step >= steps * (1 - e.late_frac) and step % e.every_late == 0:
        return True
    return e.every > 0 and step % e.every == 0


def validate(cfg: Config, world_size: int = 1) -> None:
    """Raise ConfigError for any combination that cannot run on `world_size` processes."""
    _choice("device", cfg.device, ("auto", "cpu", "cuda"))
    _check_finite(cfg)
    _validate_model(cfg.model)
    _validate_batches(cfg, world_size)
    _validate_schedule(cfg.schedule)
    _validate_optim(cfg.optim)
    _validate_constraint(cfg)
    _check(cfg.log.every > 0, f"log.every must be positive, got {cfg.log.every}")
    _check_run_id(cfg.log.run_id)
    _check(cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0, got {cfg.checkpoint.every}")
    _check(cfg.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {cfg.checkpoint.keep}")
    _check(cfg.distributed.bucket_mb > 0, f"distributed.bucket_mb must be positive, got {cfg.distributed.bucket_mb}")
    _check(cfg.distributed.timeout_s > 0, f"distributed.timeout_s must be positive, got {cfg.distributed.timeout_s}")
    if cfg.data.synthetic:
        _check(cfg.model.vocab_size <= 65536, "data.synthetic needs model.vocab_size <= 65536 (uint16 shards)")
        for key in ("train_files", "val_files"):  # naming files means using them: never a silent substitution
            value = getattr(cfg.data, key)
            _check(value == getattr(DataConfig, key),
                   f"data.{key} = {value!r} names data files, but data.synthetic = true (set by the config"
                   f"{' ' + repr(cfg.name) if cfg.name else ''}) would train on generated synthetic shards instead: "
                   f"add --data.synthetic=false to train on these files")


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


def _validate_model(m: ModelConfig) -> None:
    from model.attention import ATTENTION_KINDS
    from model.gpt import DTYPES, WINDOW_KINDS
    from model.linear import HIDDEN_INITS
    from model.loss import SOFTCAP_KINDS

    _choice("model.attention", m.attention, ATTENTION_KINDS)
    _choice("model.dtype", m.dtype, tuple(DTYPES))
    for key in ("width", "depth", "heads", "head_dim", "mlp_ratio", "seq_len", "vocab_size", "vocab_multiple"):
        _check(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
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
            len(m.window_pattern) == m.depth and set(m.window_pattern) <= set(WINDOW_KINDS),
            f"model.window_pattern must be {m.depth} letters of {'/'.join(map(repr, WINDOW_KINDS))} (one per block), "
            f"got {m.window_pattern!r}",
        )
        _check(m.window > 0, "model.window_pattern needs model.window > 0")
    if m.window_blocks:
        _check(m.window % 128 == 0 and m.window >= 256 if m.window_pattern else m.window % 128 == 0,
               f"model.window_blocks counts the window in 128-token blocks: model.window ({m.window}) must be a "
               f"multiple of 128 (and at least 256 with 'S' blocks, which get half of it)")
    _check(m.logit_softcap >= 0, f"model.logit_softcap must be >= 0, got {m.logit_softcap}")
    _check(m.compile_warmup_steps >= -1, f"model.compile_warmup_steps must be >= 0 (or -1: automatic), got "
                                         f"{m.compile_warmup_steps}")
    _choice("model.softcap_kind", m.softcap_kind, SOFTCAP_KINDS)
    _check(m.softcap_kind == "tanh" or m.logit_softcap > 0,
           f"model.softcap_kind = {m.softcap_kind!r} needs model.logit_softcap > 0 (0 turns the cap off)")
    _choice("model.hidden_init", m.hidden_init, HIDDEN_INITS)
    _check(m.loss_chunk > 0, f"model.loss_chunk must be positive (tokens per chunk of the loss), got {m.loss_chunk}")
    _check(not m.fp8_head or m.loss_chunk % 16 == 0,
           f"model.fp8_head: the FP8 matmul (torch._scaled_mm) needs model.loss_chunk to be a multiple of 16, "
           f"got {m.loss_chunk}")
    _check(m.attn_scale >= 0, f"model.attn_scale must be > 0 (or 0: model.attn_scale_rule of head_dim), got "
                              f"{m.attn_scale} (a negative scale flips the attention pattern)")
    _check(not (m.embed_bf16 and m.dtype == "float64"),
           "model.embed_bf16 stores the embedding in bfloat16, which defeats model.dtype = 'float64' (numerical "
           "checks): turn one of them off")
    _validate_lipschitz_switches(m)


def _validate_lipschitz_switches(m: ModelConfig) -> None:
    from model.gpt import ATTN_SCALE_RULES, RESIDUALS
    from model.mlp import ACTIVATIONS

    _choice("model.activation", m.activation, ACTIVATIONS)
    _choice("model.attn_scale_rule", m.attn_scale_rule, ATTN_SCALE_RULES)
    _choice("model.residual", m.residual, RESIDUALS)
    _check(m.attn_out_scale > 0, f"model.attn_out_scale must be positive, got {m.attn_out_scale}")
    _check(0 < m.residual_scale <= 2 * m.depth,
           f"model.residual_scale must be in (0, 2 x model.depth = {2 * m.depth}] (the branch weight "
           f"residual_scale / (2 depth) is at most 1), got {m.residual_scale}")
    _check(m.layer_norm or not m.norm_gains,
           "model.norm_gains are the gains of the RMSNorms, but model.layer_norm = false removes them: turn one off")


def _validate_batches(cfg: Config, world_size: int) -> None:
    m, d, e = cfg.model, cfg.data, cfg.eval
    _check(d.micro_batch_size > 0, f"data.micro_batch_size must be positive, got {d.micro_batch_size}")
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


def _validate_constraint(cfg: Config) -> None:
    """[constraint]: known methods, positive norms, settings optimizers/constraints.py accepts, a soft cap it
    can keep (max_update <= 0.3065 max_norm at the peak lr), no hyperball on zero-initialized matrices, and
    a Lipschitz bound only where model/lipschitz.py covers the model."""
    from model.lipschitz import uncovered
    from optimizers.constraints import CONSTRAINTS
    from training.constrain import EMBED_METHODS, LOG_BOUND, settings_of

    c = cfg.constraint
    _choice("constraint.method", c.method, tuple(CONSTRAINTS))
    _choice("constraint.head.method", c.head.method, tuple(CONSTRAINTS))
    _choice("constraint.embed.method", c.embed.method, EMBED_METHODS)
    _choice("constraint.log_bound", c.log_bound, LOG_BOUND)
    for key, value in (("max_norm", c.max_norm), ("head.max_norm", c.head.max_norm),
                       ("embed.max_norm", c.embed.max_norm)):
        _check(value > 0, f"constraint.{key} must be positive, got {value}")
    for key, value in (("update_norm", c.update_norm), ("head.update_norm", c.head.update_norm)):
        _check(value >= 0, f"constraint.{key} must be >= 0 (0: automatic), got {value}")
    _check(c.ns_overshoot >= 1, f"constraint.ns_overshoot must be >= 1, got {c.ns_overshoot}")
    try:
        settings_of(c).check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for prefix, role in (("constraint", c), ("constraint.head", c.head)):
        _check(role.method != "hyperball",
               f"{prefix}.method = 'hyperball' keeps each matrix at its initial Frobenius norm, but the model "
               f"zero-initializes the attention and MLP output projections and the head: they could never move")
    _check_soft_caps(cfg)
    reasons = uncovered(cfg.model)
    _check(c.log_bound != "always" or not reasons,
           "constraint.log_bound = 'always', but model/lipschitz.py does not cover this model: " + "; ".join(reasons))


def _check_soft_caps(cfg: Config) -> None:
    """The soft cap's max_update at the peak lr, for every matrix shape of its role, within its limit."""
    from training.constrain import soft_cap_limit, unit_update_norm

    c, m = cfg.constraint, cfg.model
    inner, mlp = m.heads * m.head_dim, m.mlp_ratio * m.width
    shapes = {"hidden": [(inner, m.width), (m.width, inner), (mlp, m.width), (m.width, mlp)],
              "head": [(m.padded_vocab, m.width)]}
    for role, prefix, rc in (("hidden", "constraint", c), ("head", "constraint.head", c.head)):
        if rc.method != "spectral_soft_cap":
            continue
        optim = cfg.optim
        muon = optim.settings.shape_scale if optim.name == "muon" and role == "hidden" else None
        lr = optim.role_lr(role)
        for shape in shapes[role]:
            unit = unit_update_norm(rc.update_norm, muon, c.ns_overshoot, shape, c.shape_scaled)
            _check(unit is not None,
                   f"{prefix}.method = 'spectral_soft_cap' needs {prefix}.update_norm > 0: the spectral norm one "
                   f"update adds per unit of lr (automatic only for Muon's hidden matrices)")
            ratio = lr * unit / rc.max_norm
            _check(ratio <= soft_cap_limit(),
                   f"{prefix}.method = 'spectral_soft_cap': one update at the peak lr {lr:g} can add {lr * unit:.4g} "
                   f"(in max_norm's units) to a {shape[0]}x{shape[1]} matrix, {ratio:.4f} x {prefix}.max_norm; the "
                   f"soft cap takes back at most {soft_cap_limit():.4f} x: raise {prefix}.max_norm or lower the lr")


def _validate_optim(o: OptimConfig) -> None:
    """optim.lr here; everything else by the optimizer's own settings (optimizers/<name>.py)."""
    from optimizers.spec import OptionError

    _check(o.lr > 0, f"optim.lr must be positive, got {o.lr}")
    try:
        o.settings.check()
    except OptionError as e:
        raise ConfigError(f"optim.{o.name}.{e.key}: {e.message}") from None
