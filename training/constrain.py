"""The [constraint] section at run time: weight-norm constraints right after every optimizer step, their
state in checkpoints, and the Lipschitz bound at every validation.

    after optimizer.step():   W <- constrain(W)   for the matrices of the constrained roles

Roles and methods (the math: optimizers/constraints.py; the bound: model/lipschitz.py):

    hidden   constraint.method, constraint.max_norm (β)                 none | spectral_normalize |
    head     constraint.head.method, constraint.head.max_norm           spectral_hammer | spectral_soft_cap |
                                                                        spectral_hard_cap | hyperball
    embed    constraint.embed.method, constraint.embed.max_norm         none | row_rms_cap: each row of the
             table divided by max(1, RMS(row) / max_norm), the paper's embedding projection (rows of RMS
             at most max_norm: the inputs of the blocks stay in the ball the Lipschitz bound assumes)

What each guarantees after a step: the hard cap sigma_max <= beta (to its iteration's accuracy); the soft cap
the same when the step added at most max_update (below); spectral_normalize to the accuracy of the power
iteration's estimate, which lags when steps turn the top singular vectors (up to 18% above beta
measured with AdamW and 2 warm iterations, ~3% with 8: constraint.power_iters_warm); the
spectral hammer nothing - it moves only the top singular value, so a step that lifts two above beta leaves
the second there.

The soft cap needs the largest spectral norm one optimizer step can add, max_update, in the units of
max_norm. We take max_update = (the role's current lr) x unit_update_norm(m, n): constraint.update_norm
when set (> 0; per unit of lr, the same for every shape), else, for Muon's hidden matrices and Scion's roles
in the spectral norm (updates with a known spectral norm), the shape scale s(m, n) (x Scion's radius) x the
largest singular value the
orthogonalization leaves (constraint.ns_overshoot; 0: computed from the coefficients, 1.2024 for the 5-step
quintic, whose normalized singular values end anywhere up to that), divided by √(m/n) when
constraint.shape_scaled (the RMS->RMS units of max_norm). Weight decay only shrinks W before the update, so
it is left out (a safe over-estimate). Config validation (check_constraint below) checks the peak lr against
the soft cap's limit, max_update <=
0.3065 x max_norm, for every matrix shape of the role.

Several processes: the rank that owns a matrix constrains it, then every matrix is all-gathered from its
owner, so every rank ends with the same weights as one process would. Ownership reuses the sharded
optimizer's chunks (distributed/sharding.py: the owner of a Muon matrix also orthogonalized it); the other
constrained matrices (AdamW's, the head) are cut the same way, by shape into chunks of world_size, slot r
owned by rank r. The embedding's row cap is elementwise and cheap: every rank applies it. Power-iteration
vectors and hyperball radii live on the owner; `state_dict` (a collective) collects them into the
single-process layout, so checkpoints resume exactly on any number of processes.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from common.config_io import check as _check
from common.config_io import choice as _choice
from common.errors import ConfigError
from distributed import collectives
from distributed.sharding import Chunk
from model.lipschitz import sigma_max, uncovered
from optimizers.constraint_methods import SOFT_CAP_MAX_K, role_beta, spectral_normalize
from optimizers.constraints import CONSTRAINTS, ConstraintSettings, ConstraintState, apply_constraint
from optimizers.muon import shape_scale
from optimizers.orthogonalize import largest_singular_value

EMBED_METHODS = ("none", "row_rms_cap")
LOG_BOUND = ("auto", "always", "never")  # constraint.log_bound


# ---------------------------------------------------------------------------------------------------------------------
# The embedding's row cap, the soft cap's max_update


@torch.no_grad()
def row_rms_cap_(table: Tensor, max_norm: float) -> None:
    """Each row r of `table` (vocab, width) <- r / max(1, RMS(r) / max_norm), in place: rows of RMS above
    max_norm are scaled down to it, the others keep their bits."""
    rows = table.to(torch.promote_types(table.dtype, torch.float32))
    rms = rows.square().mean(dim=-1, keepdim=True).sqrt()
    factor = (rms / max_norm).clamp_min(1.0).reciprocal()
    table.mul_(factor.to(table.dtype))


def unit_update_norm(explicit: float, auto: tuple[str, float] | None, overshoot: float, shape: tuple[int, int],
                     shape_scaled: bool) -> float | None:
    """The spectral norm one optimizer step adds to a matrix of `shape`, per unit of learning rate, in the
    units of max_norm (see the module docstring): `explicit` when > 0; for an orthogonalized update
    (`auto` = (its shape scaling, a factor): automatic_update below) factor x s(m, n) x overshoot, over
    √(m/n) when shape_scaled; else None (unknown)."""
    if explicit > 0:
        return explicit
    if auto is None:
        return None
    kind, factor = auto
    m, n = shape
    sigma = factor * shape_scale(kind, m, n) * overshoot
    return sigma / math.sqrt(m / n) if shape_scaled else sigma


def automatic_update(optim, role: str) -> tuple[str, float] | None:
    """How a role's update is scaled when it is an orthogonalization: Muon's and NorMuon's hidden matrices
    (their shape_scale setting, factor 1: NorMuon's update has Muon's Frobenius norm ...), Scion's roles in
    the spectral norm (√(d_out/d_in) x the role's radius); None for the others (update_norm must be given)."""
    if optim.name in ("muon", "normuon") and role == "hidden":
        return optim.settings.shape_scale, 1.0
    if optim.name == "scion":
        r = optim.settings.roles()[role]
        return ("spectral", r.scale) if r.norm == "spectral" else None
    return None


def soft_cap_limit() -> float:
    """The largest max_update / max_norm the soft cap can take back (optimizers/constraints.py)."""
    return SOFT_CAP_MAX_K - 1.0


def overshoot_of(cfg) -> float:
    """constraint.ns_overshoot, or (0) the largest singular value the optimizer's orthogonalization leaves, from
    its coefficients (optimizers/orthogonalize.py; 1 for optimizers that do not orthogonalize)."""
    if cfg.constraint.ns_overshoot:
        return cfg.constraint.ns_overshoot
    s = cfg.optim.settings
    if not hasattr(s, "orthogonalize"):
        return 1.0
    return largest_singular_value(s.orthogonalize, s.ns_steps or None)


def settings_of(c) -> ConstraintSettings:
    """optimizers/constraints.py's settings from the [constraint] section."""
    return ConstraintSettings(power_iters=c.power_iters, power_iters_warm=c.power_iters_warm,
                              polish_steps=c.polish_steps, skip_squarings=c.skip_squarings,
                              shape_scaled=c.shape_scaled,
                              dtype=c.dtype, backend=c.backend)


# ---------------------------------------------------------------------------------------------------------------------
# The run-time object


@dataclass
class RolePlan:
    """One constrained role: its method, β, the matrices (in model order), who owns which, its state."""

    role: str
    method: str
    max_norm: float
    update_norm: float  # constraint(.role).update_norm (0: automatic)
    params: list
    chunks: list[Chunk]
    state: ConstraintState = field(default_factory=ConstraintState)

    def owned(self, rank: int) -> list:
        return [c.params[rank] for c in self.chunks if c.params[rank] is not None]


class Constrainer:
    """Applies [constraint] after each optimizer step (`apply`), checkpoints its state, and reports the
    Lipschitz bound at validations (`metrics`, `summary`). info: the run's DistInfo (rank, world_size);
    sync: the gradient reductions (their chunks say who owns a sharded matrix), or None."""

    def __init__(self, cfg, model, info, sync=None, lr: dict[str, float] | None = None):
        """lr: each role's learning rate for the constraint at initialization (the soft cap's max_update)."""
        c = cfg.constraint
        self.cfg, self.model, self.info = cfg, model, info
        self.settings = settings_of(c)
        self.overshoot = overshoot_of(cfg)
        by_role = model.params_by_role()
        sharded = list(sync.chunks) if sync is not None else []
        self.plans = [RolePlan(role, m.method, m.max_norm, m.update_norm, by_role[role],
                               _chunks(by_role[role], sharded, info.world_size))
                      for role, m in (("hidden", c), ("head", c.head)) if m.method != "none" and by_role[role]]
        self.embed = (c.embed.max_norm, by_role["embed"][:1]) if c.embed.method == "row_rms_cap" else None
        self.bound_wanted = _bound_wanted(c.log_bound, cfg.model)
        self.last_bound: dict = {}
        if c.at_init:
            self.apply(lr or {}, exact_first=True)

    def describe(self) -> str:
        parts = [f"{p.role} {p.method} (max_norm {p.max_norm:g})" for p in self.plans]
        if self.embed:
            parts.append(f"embed row_rms_cap (max_norm {self.embed[0]:g})")
        bound = "logged at every validation" if self.bound_wanted else "not logged"
        return f"constraints: {', '.join(parts) or 'none'}; Lipschitz bound {bound}"

    # -- after every optimizer step -------------------------------------------------------------------------------

    @torch.no_grad()
    def apply(self, lr: dict[str, float], exact_first: bool = False) -> None:
        """Constrain this rank's matrices, then gather every matrix from its owner; lr: each role's learning
        rate of the step just taken (the soft cap's max_update). exact_first (the initial
        weights): first divide every matrix by max(1, sigma_max / beta) with sigma_max from an SVD, since a cold
        power iteration can be several % low (measured: 3.8% on the 64-wide smoke matrices after 16 steps)
        and the soft cap keeps only matrices that start at most (1 + max_update / beta) above beta."""
        if exact_first:
            for plan in self.plans:
                if plan.method != "hyperball":
                    _normalize_exactly(plan.params, plan.max_norm, self.settings.shape_scaled)
        if self.embed is not None:
            max_norm, tables = self.embed
            for t in tables:
                row_rms_cap_(t, max_norm)
        for plan in self.plans:
            mine = plan.owned(self.info.rank)
            if exact_first:  # zero matrices (output projections, the head) stay zero: their power iteration
                mine = [w for w in mine if bool(w.any())]  # starts cold at their first nonzero step instead
            for shape, ws in _by_shape(mine).items():
                apply_constraint(plan.method, ws, plan.max_norm, plan.state,
                                 max_update=self._max_update(plan, shape, lr.get(plan.role, 0.0)),
                                 settings=self.settings)
            if self.info.active:
                _gather_weights(plan.chunks, self.info.rank, self.info.world_size)

    def _max_update(self, plan: RolePlan, shape: tuple[int, int], lr: float) -> float | None:
        """The soft cap's max_update at the role's lr (None for the other methods)."""
        if plan.method != "spectral_soft_cap":
            return None
        auto = automatic_update(self.cfg.optim, plan.role)
        unit = unit_update_norm(plan.update_norm, auto, self.overshoot, shape, self.settings.shape_scaled)
        if unit is None:
            raise ValueError(f"constraint: the soft cap on the {plan.role} matrices needs update_norm > 0")
        return lr * unit

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def snapshot(self) -> list[ConstraintState]:
        """A copy of this rank's state (the compile warm-up runs steps and then puts everything back)."""
        return [copy.deepcopy(plan.state) for plan in self.plans]

    def restore(self, states: list[ConstraintState]) -> None:
        for plan, state in zip(self.plans, states, strict=True):
            plan.state = state

    def state_dict(self) -> dict:
        """Every role's power vectors and radii by position, in the single-process layout (a collective
        with several processes: each matrix's entries come from its owner)."""
        if self.info.active:
            for plan in self.plans:
                _collect_state(plan, self.info.rank)
        return {plan.role: plan.state.state_dict(plan.params) for plan in self.plans}

    def load_state_dict(self, state: dict) -> None:
        for plan in self.plans:
            if plan.role in state:
                plan.state.load_state_dict(plan.params, state[plan.role])

    # -- the Lipschitz bound ----------------------------------------------------------------------------------------

    def metrics(self) -> dict:
        """lipschitz_bound, log10_lipschitz_bound and each matrix's σ_max (rank 0; empty when not wanted)."""
        if not (self.bound_wanted and self.info.is_main):
            return {}
        from model.lipschitz import lipschitz_bound

        self.last_bound = lipschitz_bound(self.model).metrics()
        return self.last_bound

    def summary(self) -> dict:
        """The last bound, for summary.json (empty when none was computed)."""
        keep = ("lipschitz_bound", "log10_lipschitz_bound", "lipschitz_reference")
        return {k: v for k, v in self.last_bound.items() if k in keep}


def _normalize_exactly(params: list, max_norm: float, shape_scaled: bool) -> None:
    """W <- W / max(1, sigma_max / beta) for each matrix, sigma_max exact (SVD, float64): every rank the same."""
    for p in params:
        beta = role_beta(max_norm, *p.shape[-2:], shape_scaled)
        p.detach().copy_(spectral_normalize(p.detach(), beta, sigma_max(p)))


def _bound_wanted(mode: str, model_cfg) -> bool:
    from model.lipschitz import uncovered

    return mode == "always" or (mode == "auto" and not uncovered(model_cfg))


def _by_shape(params: list) -> dict[tuple, list]:
    groups: dict[tuple, list] = defaultdict(list)
    for p in params:
        groups[tuple(p.shape[-2:])].append(p)
    return groups


def _chunks(params: list, sharded: list[Chunk], world_size: int) -> list[Chunk]:
    """The chunks of the sharded optimizer that hold these params, then the rest cut by shape into chunks
    of world_size (slot r: rank r's), as distributed/sharding.py does."""
    ids = {id(p) for p in params}
    chunks = [c for c in sharded if any(p is not None and id(p) in ids for p in c.params)]
    taken = {id(p) for c in chunks for p in c.params if p is not None}
    rest: dict[tuple, list] = defaultdict(list)
    for p in params:
        if id(p) not in taken:
            rest[tuple(p.shape)].append(p)
    for shape, ps in rest.items():
        for start in range(0, len(ps), world_size):
            slots = ps[start:start + world_size]
            chunks.append(Chunk(-1, shape, slots + [None] * (world_size - len(slots))))
    return chunks


def _gather_weights(chunks: list[Chunk], rank: int, world_size: int) -> None:
    """Every slot of every chunk from its owner (all-gathers launched together, then copied in)."""
    pending = []
    for chunk in chunks:
        ref = next(p for p in chunk.params if p is not None)
        mine = chunk.params[rank]
        local = mine.detach().contiguous() if mine is not None else torch.zeros_like(ref)
        out = torch.empty(world_size * local.numel(), dtype=local.dtype, device=local.device)
        pending.append((chunk, out, collectives.all_gather(out, local.view(-1))))
    for chunk, out, handle in pending:
        handle.wait()
        for r, p in enumerate(chunk.params):
            if p is not None and r != rank:
                p.detach().copy_(out.view(world_size, *p.shape)[r])


def _collect_state(plan: RolePlan, rank: int) -> None:
    """Give every rank every matrix's power vector and radius: each owner writes its own into a zero buffer
    (with a presence flag) and a SUM all-reduce adds them up, which is exact (x + 0 = x)."""
    owned = {id(p) for p in plan.owned(rank)}
    for name in ("vectors", "radii"):
        store = getattr(plan.state, name)
        keys = [(p.data_ptr(), tuple(p.shape)) for p in plan.params]
        shapes = [(*p.shape[:-2], p.size(-1)) if name == "vectors" else tuple(p.shape[:-2]) for p in plan.params]
        dtype = torch.promote_types(plan.params[0].dtype, torch.float32)
        sizes = [math.prod(s) for s in shapes]
        flat = torch.zeros(sum(sizes) + len(sizes), dtype=dtype, device=plan.params[0].device)
        values, present = flat[: sum(sizes)].split(sizes), flat[sum(sizes):]
        for i, (p, k) in enumerate(zip(plan.params, keys)):
            if id(p) in owned and k in store:
                values[i].copy_(store[k].reshape(-1))
                present[i] = 1
        dist.all_reduce(flat)
        for i, k in enumerate(keys):
            if present[i] > 0:
                store[k] = values[i].reshape(shapes[i]).clone()


# -- the [constraint] section ------------------------------------------------------------------------------------


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

    method: str = "none"  # hidden matrices: none | spectral_{normalize,hammer,soft_cap,hard_cap} | hyperball
    max_norm: float = 1.0  # beta: bound on sigma_max (shape_scaled: on the RMS->RMS norm sqrt(d_in/d_out) sigma_max)
    update_norm: float = 0.0  # soft cap: sigma of one update per unit lr, in max_norm's units; 0: auto (Muon)
    ns_overshoot: float = 0.0  # auto update_norm: Muon's shape scale x this; 0: computed (optimizers/orthogonalize.py)
    shape_scaled: bool = False  # max_norm bounds the RMS->RMS norm (the paper's), not sigma_max itself
    power_iters: int = 16  # power iterations for a matrix seen the first time ...
    power_iters_warm: int = 2  # ... and afterwards, from the stored vector
    polish_steps: int = 3  # hard cap: monotone-quintic steps after Polar Express's five
    skip_squarings: int = 4  # hard cap: matrices certified inside (Gram squared this often) keep their bits; 0: never
    dtype: str = "auto"  # soft / hard cap iterations: auto (bf16 on CUDA, fp32 else) | bfloat16 | float32 | float64
    backend: str = "auto"  # hard cap's polar / sign iterations: auto | torch | triton
    at_init: bool = True  # also constrain the initial weights (before step 1)
    log_bound: str = "auto"  # lipschitz_bound at validations: auto (when model/lipschitz.py covers it) | always | never
    embed: RoleConstraintConfig = field(default_factory=RoleConstraintConfig)
    head: RoleConstraintConfig = field(default_factory=RoleConstraintConfig)


def check_constraint(cfg) -> None:
    """[constraint]: known methods, positive norms, settings optimizers/constraints.py accepts, a soft cap it
    can keep (max_update <= 0.3065 max_norm at the peak lr), no hyperball on zero-initialized matrices, and
    a Lipschitz bound only where model/lipschitz.py covers the model (cfg: the whole run config)."""
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
    _check(c.ns_overshoot == 0 or c.ns_overshoot >= 1,
           f"constraint.ns_overshoot must be >= 1 (or 0: computed), got {c.ns_overshoot}")
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


def _check_soft_caps(cfg) -> None:
    """The soft cap's max_update at the peak lr, for every matrix shape of its role, within its limit."""
    c, m = cfg.constraint, cfg.model
    inner, mlp = m.heads * m.head_dim, m.mlp_ratio * m.width
    shapes = {"hidden": [(inner, m.width), (m.width, inner), (mlp, m.width), (m.width, mlp)],
              "head": [(m.padded_vocab, m.width)]}
    for role, prefix, rc in (("hidden", "constraint", c), ("head", "constraint.head", c.head)):
        if rc.method != "spectral_soft_cap":
            continue
        optim = cfg.optim
        auto = automatic_update(optim, role)
        lr = optim.role_lr(role)
        for shape in shapes[role]:
            unit = unit_update_norm(rc.update_norm, auto, overshoot_of(cfg), shape, c.shape_scaled)
            _check(unit is not None,
                   f"{prefix}.method = 'spectral_soft_cap' needs {prefix}.update_norm > 0: the spectral norm one "
                   f"update adds per unit of lr (automatic only for Muon's hidden matrices and Scion's spectral "
                   f"roles)")
            ratio = lr * unit / rc.max_norm
            _check(ratio <= soft_cap_limit(),
                   f"{prefix}.method = 'spectral_soft_cap': one update at the peak lr {lr:g} can add {lr * unit:.4g} "
                   f"(in max_norm's units) to a {shape[0]}x{shape[1]} matrix, {ratio:.4f} x {prefix}.max_norm; the "
                   f"soft cap takes back at most {soft_cap_limit():.4f} x: raise {prefix}.max_norm or lower the lr")
