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

from optimizers.auxiliary import AUXILIARY, auxiliary_step, role_groups
from optimizers.orthogonalize import orthogonalize
from optimizers.prodigy import PRODIGY, prodigy_metrics
from optimizers.sharded import ShardableOptimizer
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
)

SHAPE_SCALES = ("muon", "spectral", "adamw")
LR = 0.05  # optim.lr: the hidden matrices' learning rate


@dataclass(frozen=True)
class MuonConfig(MomentumWarmup, Orthogonalizes, OptimizerSettings):
    """[optim.muon]. Hidden matrices: Muon at optim.lr; the other roles: the auxiliary AdamW."""

    momentum: float = 0.95  # β
    nesterov: bool = True
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


_D = MuonConfig()


def shape_scale(kind: str, d_out: int, d_in: int) -> float:
    if kind == "muon":
        return max(1.0, d_out / d_in) ** 0.5
    if kind == "spectral":
        return (d_out / d_in) ** 0.5
    if kind == "adamw":
        return 0.2 * math.sqrt(max(d_out, d_in))
    raise ValueError(f"unknown shape scaling {kind!r}; choose from {', '.join(SHAPE_SCALES)}")


def muon_direction(grad: Tensor, buf: Tensor, beta: float, nesterov: bool) -> Tensor:
    """Update the momentum buffer in place; return the direction D to orthogonalize."""
    buf.lerp_(grad, 1 - beta)
    return grad.lerp(buf, beta) if nesterov else buf.clone()


class Muon(ShardableOptimizer):
    """Muon for groups with algorithm="muon" (the default), AdamW for groups with algorithm="adamw".

    Args (defaults for every group; a group may override any of them):
        lr, momentum (β), nesterov, weight_decay (λ)
        method, steps, backend: the orthogonalization (see optimizers/orthogonalize.py)
        shape_scale: "muon" | "spectral" | "adamw"
        betas, eps: the AdamW groups' (β1, β2) and ε
    """

    def __init__(self, params, lr: float = LR, momentum: float = _D.momentum, nesterov: bool = _D.nesterov,
                 weight_decay: float = 0.0, method: str = _D.orthogonalize, steps: int | None = None,
                 backend: str = _D.backend, shape_scale: str = _D.shape_scale, betas=_D.adam_betas,
                 eps: float = _D.adam_eps):
        defaults = dict(algorithm="muon", lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        method=method, steps=steps, backend=backend, shape_scale=shape_scale, betas=betas, eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["algorithm"] not in ("muon", *AUXILIARY):
                raise ValueError(f"Muon param group algorithm must be 'muon', 'adamw' or 'prodigy', "
                                 f"got {group['algorithm']!r}")
            if group["algorithm"] == "muon":
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(f"Muon orthogonalizes matrices; a parameter of shape {tuple(p.shape)} "
                                         f"belongs in an 'adamw' group")

    # The step's three parts (optimizers/sharded.py, ShardableOptimizer): `updates` (momentum +
    # orthogonalization), `apply_update` and `step_replicated` (the AdamW groups).

    def is_sharded(self, group: dict) -> bool:
        """Groups whose matrices are orthogonalized by their owner rank only."""
        return group["algorithm"] == "muon"

    def updates(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Scaled, orthogonalized updates for same-shape params (momentum state updated), computed
        as one batch."""
        directions = []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g)
            directions.append(muon_direction(g, state["momentum_buffer"], group["momentum"], group["nesterov"]))
        U = orthogonalize(torch.stack(directions), group["method"], group["steps"], backend=group["backend"],
                          keep_dtype=True)  # bf16 on CUDA: no round trip to fp32 before the bf16 gather
        return list((U * shape_scale(group["shape_scale"], U.size(-2), U.size(-1))).unbind(0))

    def gather_dtype(self, group: dict, grad: Tensor) -> torch.dtype:
        """bf16 on CUDA, as the records gather Muon's updates: half the bytes of fp32 (Newton-Schulz works in
        bf16 there anyway)."""
        return torch.bfloat16 if grad.is_cuda else grad.dtype

    @staticmethod
    def apply_update(group: dict, p: Tensor, update: Tensor) -> None:
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"])

    def step_replicated(self) -> None:
        """The auxiliary groups (optimizers/auxiliary.py): AdamW's, Prodigy's."""
        for group in self.param_groups:
            if not self.is_sharded(group):
                auxiliary_step(group, self.state)

    def metrics(self) -> dict[str, float]:
        """The distance estimate d of each Prodigy role (empty without one)."""
        return prodigy_metrics([g for g in self.param_groups if g["algorithm"] == PRODIGY])


def build(groups: list[dict], s: MuonConfig, device: torch.device) -> Muon:
    """One group per role: the "spectral" role (hidden) is Muon's, the others its AdamW's or Prodigy's."""
    role_groups(groups, "muon")
    return Muon(groups, momentum=s.momentum, nesterov=s.nesterov, method=s.orthogonalize, steps=s.ns_steps or None,
                backend=s.backend, shape_scale=s.shape_scale, betas=tuple(s.adam_betas), eps=s.adam_eps)


SPEC = OptimizerSpec(
    name="muon", lr=LR, settings=MuonConfig, build=build,
    about="Muon: momentum, then Newton-Schulz orthogonalization (spectral norm) for hidden matrices; "
          "AdamW (or Prodigy) for the rest",
)
