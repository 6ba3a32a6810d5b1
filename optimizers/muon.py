"""Muon: MomentUm Orthogonalized by Newton–Schulz (Jordan et al., 2024), with an auxiliary AdamW.

For each hidden matrix W (d_out × d_in) with gradient G, a param group with algorithm "muon" does

    M <- β·M + (1 − β)·G                                  momentum (an exponential average)
    D <- (1 − β)·G + β·M   (Nesterov)   or   D <- M
    W <- (1 − lr·λ)·W − lr · s(d_out, d_in) · orth(D)     decoupled weight decay λ

where orth(D) ≈ U Vᵀ of D = U S Vᵀ (optimizers/orthogonalize.py) and s is the shape scaling:

    "muon"      max(1, d_out/d_in)^½          (Keller Jordan's Muon; the speedrun records)
    "spectral"  √(d_out/d_in)                  (the RMS→RMS duality map: s·orth(D) is its direction)
    "adamw"     0.2·√max(d_out, d_in)          (Moonlight: matches AdamW's update RMS, reuse its lr)

Matrices of the same shape are orthogonalized together as one batch. A weight with leading
dimensions (e.g. a merged (3, d, d) QKV weight) is a batch of independent matrices.

Param groups with algorithm "adamw" or "prodigy" (embeddings, head, scalars: what Muon must not touch)
take a step of the auxiliary optimizer instead (optimizers/auxiliary.py: AdamW, fused on CUDA, or
Prodigy), so one optimizer object, with one state_dict, trains the whole model.

Config: `[optim] name = "muon"`, settings in `[optim.muon]` (MuonConfig below: the defaults are the
modded-nanogpt record of 2025-01-26, and the class takes its defaults from the same dataclass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optimizers.auxiliary import AUXILIARY, auxiliary_metrics, auxiliary_step, decayed_step, role_groups
from optimizers.orthogonalize import orthogonalize
from optimizers.prodigy import PRODIGY
from optimizers.shardable import ShardableOptimizer
from optimizers.spec import (
    ADAMW,
    MomentumWarmup,
    OptimizerSettings,
    OptimizerSpec,
    Orthogonalizes,
    Role,
    check_choice,
    check_positive,
    check_range,
    group_defaults,
)

SHAPE_SCALES = ("muon", "spectral", "adamw")
LR = 0.05  # optim.lr: the hidden matrices' learning rate


@dataclass(frozen=True)
class MuonConfig(MomentumWarmup, Orthogonalizes, OptimizerSettings):
    """[optim.muon]. Hidden matrices: Muon at optim.lr; the other roles: the auxiliary AdamW."""

    momentum: float = 0.95  # β
    nesterov: bool = True  # orthogonalize (1 − β)·G + β·M instead of M
    momentum_warmup_from: float | None = 0.85  # the momentum ramps linearly from this ...
    momentum_warmup_steps: int = 300  # ... to `momentum` over these steps (0: no warm-up)
    orthogonalize: str = "newton_schulz"  # a METHODS key (optimizers/orthogonalize.py)
    ns_steps: int = 0  # iterations of the orthogonalization; 0 = the method's default
    backend: str = "auto"  # auto (Triton on CUDA) | torch | triton
    shape_scale: str = "muon"  # muon max(1,m/n)^.5 | spectral sqrt(m/n) | adamw .2 sqrt(max(m,n))
    adam_betas: tuple[float, float] = (0.8, 0.95)  # the auxiliary AdamW's (β1, β2) ...
    adam_eps: float = 1e-10  # ... and ε
    embed: Role = Role(ADAMW, lr=0.6)
    hidden: Role = Role("spectral")
    head: Role = Role(ADAMW, lr=0.008)
    scalar: Role = Role(ADAMW, lr=0.04)

    role_norms = {"embed": (ADAMW, PRODIGY), "hidden": ("spectral",), "head": (ADAMW, PRODIGY),
                  "scalar": (ADAMW, PRODIGY)}
    role_rule = ("is not how Muon trains this role: hidden matrices in the spectral norm (orthogonalized "
                 "updates), the other roles with its auxiliary AdamW or Prodigy (optim.name = 'scion' takes any "
                 "norm per role)")

    def check(self) -> None:
        super().check()
        self.check_momentum()
        self.check_orthogonalization()
        check_choice("shape_scale", self.shape_scale, SHAPE_SCALES)
        for i, beta in enumerate(self.adam_betas):
            check_range(f"adam_betas[{i}]", beta, 0.0, 1.0)
        check_positive("adam_eps", self.adam_eps)


def shape_scale(kind: str, d_out: int, d_in: int) -> float:
    if kind == "muon":
        return max(1.0, d_out / d_in) ** 0.5
    if kind == "spectral":
        return (d_out / d_in) ** 0.5
    if kind == "adamw":
        return 0.2 * math.sqrt(max(d_out, d_in))
    raise ValueError(f"unknown shape scaling {kind!r}; choose from {', '.join(SHAPE_SCALES)}")


def muon_update(grads: list[Tensor], momenta: list[Tensor], momentum: float, nesterov: bool, method: str,
                steps: int, backend: str, scaling: str) -> Tensor:
    """Muon's update of same-shape matrices, as one stacked batch (the momentum buffers updated in place):

        M <- β·M + (1 − β)·G
        D <- (1 − β)·G + β·M   (Nesterov)   or   D <- M
        U = s(d_out, d_in) · orth(D)

    orth: the orthogonalization `method` with `steps` iterations (0: its default), optimizers/orthogonalize.py;
    s: the shape `scaling` (module docstring). The step is W <- (1 − lr·λ)·W − lr·U (`Muon.apply_update`).
    On CUDA orth(D) stays in bf16 (no round trip to fp32 before the bf16 gather of the sharded step)."""
    directions = []
    for g, m in zip(grads, momenta):
        m.lerp_(g, 1 - momentum)
        directions.append(g.lerp(m, momentum) if nesterov else m.clone())
    U = orthogonalize(torch.stack(directions), method, steps or None, backend=backend, keep_dtype=True)
    return U * shape_scale(scaling, U.size(-2), U.size(-1))


class Muon(ShardableOptimizer):
    """Muon for groups with algorithm="muon" (the default), the auxiliary AdamW for algorithm="adamw", Prodigy
    for "prodigy" (optimizers/auxiliary.py).

    Args: lr, and as keywords any of MuonConfig's group fields (momentum, nesterov, orthogonalize, ns_steps,
    backend, shape_scale, adam_betas, adam_eps), weight_decay (λ) and algorithm: the defaults of every
    group, MuonConfig's (a group may override any of them).
    """

    settings_class = MuonConfig

    def __init__(self, params, lr: float = LR, **settings):
        super().__init__(params, group_defaults(self.settings_class, lr, settings, algorithm="muon", weight_decay=0.0))
        for group in self.param_groups:
            if group["algorithm"] not in ("muon", *AUXILIARY):
                raise ValueError(f"Muon param group algorithm must be 'muon', 'adamw' or 'prodigy', "
                                 f"got {group['algorithm']!r}")
            if group["algorithm"] == "muon":
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(f"Muon orthogonalizes matrices; a parameter of shape {tuple(p.shape)} "
                                         f"belongs in an 'adamw' group")

    # The step's three parts (optimizers/shardable.py, ShardableOptimizer): `updates` (muon_update),
    # `apply_update` and `step_replicated` (the auxiliary groups).

    def is_sharded(self, group: dict) -> bool:
        """Groups whose matrices are orthogonalized by their owner rank only."""
        return group["algorithm"] == "muon"

    def updates(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """`muon_update` of same-shape params, one batch."""
        momenta = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(g)) for p, g in zip(params, grads)]
        U = muon_update(grads, momenta, group["momentum"], group["nesterov"], group["orthogonalize"],
                        group["ns_steps"], group["backend"], group["shape_scale"])
        return list(U.unbind(0))

    def gather_dtype(self, group: dict, grad: Tensor) -> torch.dtype:
        """bf16 on CUDA, as the records gather Muon's updates: half the bytes of fp32 (Newton-Schulz works in
        bf16 there anyway)."""
        return torch.bfloat16 if grad.is_cuda else grad.dtype

    @staticmethod
    def apply_update(group: dict, p: Tensor, update: Tensor) -> None:
        decayed_step(group, p, update)

    def step_replicated(self) -> None:
        """The auxiliary groups (optimizers/auxiliary.py): AdamW's, Prodigy's."""
        for group in self.param_groups:
            if not self.is_sharded(group):
                auxiliary_step(group, self.state)

    def metrics(self) -> dict[str, float]:
        """The distance estimate d of each Prodigy role (empty without one)."""
        return auxiliary_metrics(self.param_groups)


def build(groups: list[dict], s: MuonConfig, device: torch.device) -> Muon:
    """One group per role: the "spectral" role (hidden) is Muon's, the others its AdamW's or Prodigy's."""
    return Muon(role_groups(groups, "muon"), **s.group_settings())


SPEC = OptimizerSpec(
    name="muon", lr=LR, settings=MuonConfig, build=build,
    about="Muon: momentum, then Newton-Schulz orthogonalization (spectral norm) for hidden matrices; "
          "AdamW (or Prodigy) for the rest",
)
