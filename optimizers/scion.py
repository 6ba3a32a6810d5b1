"""Scion: stochastic conditional gradient with norm-constrained LMOs (Pethick et al., 2025).

Each param group names a norm (optimizers/norms.py) and a radius ρ ("scale"); with
lmo(d) = −ρ·direction(d), the linear minimization oracle over the ball ‖x‖ <= ρ:

    d <- β·d + (1 − β)·g                          momentum (the paper's α is 1 − β; α = 0.1)
    uSCG (unconstrained):  x <- (1 − γλ)·x + γ·lmo(d)     optional decoupled weight decay λ
    SCG  (constrained):    x <- (1 − γ)·x + γ·lmo(d)      a convex combination: x stays in the ball

γ is the group's lr. SCG is uSCG with λ = 1; more generally uSCG with (γ, ρ, λ) is SCG with step
γλ and radius ρ/λ. The spectral norm's direction uses the group's orthogonalization method.

Embedding tables stored as (vocab, dim) are maps from one-hot vectors: groups with
transposed=True hand their gradients to the norm as (dim, vocab).

light=True is the memory-light variant: the momentum lives in p.grad itself, so the optimizer
keeps no buffer of its own. After each step p.grad <- β·p.grad, and the next backward adds the
new gradient: p.grad = β·d + g, which is the average d/(1 − β) up to a constant factor that no
LMO can see (every direction is scale invariant). The trainer must not zero these gradients
(`holds_state_in_grad(group)` says which); if it does, the momentum is restored from state.

Config: `[optim] name = "scion"`, settings in `[optim.scion]` (ScionConfig below: the defaults are
the paper's nanoGPT setting, and the class takes its defaults from the same dataclass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.roles import ROLES
from optimizers.norms import NORMS
from optimizers.shardable import ShardableOptimizer
from optimizers.spec import (
    MomentumWarmup,
    OptimizerSettings,
    OptimizerSpec,
    OptionError,
    Orthogonalizes,
    Role,
    group_defaults,
)

LR = 2.0**-12  # optim.lr: every role's step size γ


@dataclass(frozen=True)
class ScionConfig(MomentumWarmup, Orthogonalizes, OptimizerSettings):
    """[optim.scion]. The paper's nanoGPT setting (Pethick et al. 2025; their README): Sign -> Spectral
    -> Sign, radius 50, head radius 50 x 60 = 3000 with Sign normalized by fan-in, lr 2^-12, momentum
    alpha = 0.1 (beta = 0.9), constrained. Their model ties the embedding to the head, so the
    embedding saw per-entry radius 3000/768; ours is untied and keeps that per-entry radius with the
    plain (one-hot input) Sign norm. Scalars (absent from their model) get Sign with radius 1."""

    momentum: float = 0.9  # β (the paper's α is 1 − β)
    momentum_warmup_from: float | None = None  # the momentum ramps linearly from this ...
    momentum_warmup_steps: int = 0  # ... to `momentum` over these steps (0: no warm-up)
    constrained: bool = True  # SCG (stay in the norm ball) or uSCG
    light: bool = False  # keep the momentum in p.grad (no optimizer buffer)
    scion_init: bool = False  # re-initialize every parameter on its norm's sphere x radius
    orthogonalize: str = "newton_schulz"  # the spectral norm's orthogonalization (a METHODS key)
    ns_steps: int = 0  # 0 = the method's default
    backend: str = "auto"  # auto (Triton on CUDA) | torch | triton
    embed: Role = Role("sign", scale=3000.0 / 768)
    hidden: Role = Role("spectral", scale=50.0)
    head: Role = Role("sign_fanin", scale=3000.0)
    scalar: Role = Role("sign", scale=1.0)

    role_norms = {role: tuple(NORMS) for role in ROLES}
    role_rule = "is not a norm: Scion trains every role with a norm's LMO, and AdamW has none"
    not_group_keys = (*MomentumWarmup.not_group_keys, "scion_init")

    def check(self) -> None:
        super().check()
        self.check_momentum()
        self.check_orthogonalization()
        for name, role in self.roles().items():
            if self.constrained and role.weight_decay:
                raise OptionError(f"{name}.weight_decay", "constrained Scion (SCG) has no separate weight decay; its "
                                  "(1 - lr) shrinkage is the decay. Set optim.scion.constrained = false for uSCG with "
                                  "weight decay")


def scion_update(momenta: list[Tensor], grads: list[Tensor] | None, momentum: float, norm: str, transposed: bool,
                 method: str, steps: int, backend: str) -> list[Tensor]:
    """Scion's directions for same-shape tensors (the momenta updated in place):

        d <- β·d + (1 − β)·g          (grads None: d already is the light variant's β·d + g)
        dir(d)                        the unit steepest direction in the norm: lmo(d) = −ρ·dir(d)

    The step (`Scion.apply_update`): x <- (1 − γ)·x − γρ·dir(d) (SCG), or x <- (1 − γλ)·x − γρ·dir(d)
    (uSCG). Matrices are stacked into one batch (every norm treats a batch of matrices matrix by matrix),
    vectors go one by one; `transposed` hands (vocab, dim) tables to the norm as (dim, vocab); the
    spectral norm's direction is an orthogonalization (`method`, `steps` (0: its default), `backend`)."""
    if grads is not None:
        for d, g in zip(momenta, grads):
            d.lerp_(g, 1 - momentum)
    unit = NORMS[norm]
    kw = dict(method=method, steps=steps or None, backend=backend) if unit.orthogonalizes else {}

    def direction(d: Tensor) -> Tensor:
        u = unit.direction(d.mT if transposed else d, **kw)
        return u.mT if transposed else u

    if momenta[0].ndim < 2:
        return [direction(d) for d in momenta]
    return list(direction(torch.stack(momenta)).unbind(0))


class Scion(ShardableOptimizer):
    """Args: lr (γ), and as keywords any of ScionConfig's group fields (momentum (β), constrained, light,
    orthogonalize, ns_steps, backend) and norm (a NORMS key), scale (ρ), weight_decay (λ, uSCG only),
    transposed: the defaults of every group (ScionConfig's; a group may override any)."""

    def __init__(self, params, lr: float = LR, **settings):
        super().__init__(params, group_defaults(ScionConfig, lr, settings, norm="spectral", scale=1.0,
                                                weight_decay=0.0, transposed=False))
        for group in self.param_groups:
            if group["norm"] not in NORMS:
                raise ValueError(f"unknown norm {group['norm']!r}; choose from {', '.join(NORMS)}")
            norm = NORMS[group["norm"]]
            for p in group["params"]:
                if norm.matrix_only and p.ndim < 2:
                    raise ValueError(f"the {norm.name} norm needs matrices; a parameter of shape {tuple(p.shape)} "
                                     f"needs a vector norm (rms, sign, euclidean)")
            if group["constrained"] and group["weight_decay"]:
                raise ValueError("constrained Scion (SCG) has no separate weight decay: its (1 - lr) factor is one")

    @staticmethod
    def holds_state_in_grad(group: dict) -> bool:
        """The light variant's groups keep their momentum in p.grad."""
        return group["light"]

    # The step's three parts (optimizers/shardable.py, ShardableOptimizer): `updates` (momentum +
    # direction), `apply_update` and `step_replicated` (the groups in cheap elementwise norms, and
    # the light variant's spectral groups).

    def is_sharded(self, group: dict) -> bool:
        """Spectral-norm groups: their direction (an orthogonalization) is computed by the owner rank."""
        return NORMS[group["norm"]].orthogonalizes and not group["light"]

    def updates(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """`scion_update` of same-shape params (their momentum state updated)."""
        momenta = [self._momentum_buffer(group, p, g) for p, g in zip(params, grads)]
        return scion_update(momenta, None if group["light"] else grads, group["momentum"], group["norm"],
                            group["transposed"], group["orthogonalize"], group["ns_steps"], group["backend"])

    @staticmethod
    def apply_update(group: dict, p: Tensor, direction: Tensor) -> None:
        """x <- (1 - shrink)·x + lr·lmo(d), lmo(d) = -scale·direction."""
        lr = group["lr"]
        shrink = lr if group["constrained"] else lr * group["weight_decay"]
        if shrink:
            p.mul_(1 - shrink)
        p.add_(direction.to(p.dtype), alpha=-lr * group["scale"])

    def step_replicated(self) -> None:
        for group in self.param_groups:
            if not self.is_sharded(group):
                self.step_group(group)

    def step_group(self, group: dict) -> None:
        super().step_group(group)
        if group["light"]:  # the momentum decays in p.grad; the next backward adds the new gradient
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(group["momentum"])

    def _momentum_buffer(self, group: dict, p: Tensor, grad: Tensor) -> Tensor:
        """p's momentum d: its own buffer, or (light) p.grad, which holds β·d + g."""
        state = self.state[p]
        if group["light"]:  # grad is p.grad, which holds the momentum
            buf = state.get("momentum_buffer")
            if buf is not None and buf is not grad:  # the grad was reset (or state was loaded)
                grad.add_(buf)
            state["momentum_buffer"] = grad  # the same tensor: saved with the state, no extra memory
            return grad
        return state.setdefault("momentum_buffer", torch.zeros_like(grad))

    def load_state_dict(self, state_dict: dict) -> None:
        """Also put the light variant's momentum back into p.grad, where the next backward
        accumulates into it exactly as in an uninterrupted run."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if group["light"]:
                for p in group["params"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        continue
                    if p.grad is None:
                        p.grad = state["momentum_buffer"]
                    else:  # keep the tensor p.grad is (a view into a gradient bucket, distributed/grad_sync.py)
                        p.grad.copy_(state["momentum_buffer"])
                        state["momentum_buffer"] = p.grad

    @torch.no_grad()
    def init_parameters(self) -> None:
        """Scion's initialization: each parameter drawn on the sphere of its group's norm, times ρ."""
        for group in self.param_groups:
            norm = NORMS[group["norm"]]
            for p in group["params"]:
                w = torch.empty_like(p.mT if group["transposed"] else p, memory_format=torch.contiguous_format)
                norm.init_(w)
                p.copy_(w.mT if group["transposed"] else w).mul_(group["scale"])


def build(groups: list[dict], s: ScionConfig, device: torch.device) -> Scion:
    """One group per role, each with its norm and radius; embedding tables are (vocab, dim): maps
    from one-hot vectors, handed to their norm transposed."""
    for g in groups:
        g["transposed"] = g["role"] == "embed"
    opt = Scion(groups, **s.group_settings())
    if s.scion_init:
        opt.init_parameters()
    return opt


SPEC = OptimizerSpec(
    name="scion", lr=LR, settings=ScionConfig, build=build,
    about="Scion: every role a conditional-gradient step with its norm's LMO (Sign -> Spectral -> Sign), "
          "constrained (SCG) or not (uSCG)",
)
