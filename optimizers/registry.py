"""The optimizers by name, and building one from the model's parameter roles.

Each optimizer module declares, next to its class, a SPEC (optimizers/spec.py): its name, its
settings dataclass (the config keys it accepts, with their defaults and checks), its default
learning rate and how it is built. Adding an optimizer is one module and one line below.
"""

from __future__ import annotations

import torch

from optimizers import adamw, muon, normuon, prodigy, scion, shampoo, signum
from optimizers.spec import OptimizerSpec

OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    muon.SPEC,
    scion.SPEC,
    adamw.SPEC,
    signum.SPEC,
    shampoo.SPEC,
    prodigy.SPEC,
    normuon.SPEC,
)}


def build_optimizer(params_by_role: dict, optim, device: torch.device) -> torch.optim.Optimizer:
    """params_by_role: {"embed": [...], "hidden": [...], "head": [...], "scalar": [...]}; optim: a
    resolved [optim] config (name, lr, settings). One param group per non-empty role, carrying its
    role, its peak lr, weight decay, norm and scale (the trainer sets each step's lr: Trainer.set_schedules).
    One optimizer object trains the whole model, with one state_dict."""
    spec = OPTIMIZERS[optim.name]
    groups = []
    for name, role in optim.settings.roles().items():
        if params_by_role.get(name):
            groups.append(dict(params=params_by_role[name], role=name, lr=optim.role_lr(name),
                               weight_decay=role.weight_decay, norm=role.norm, scale=role.scale))
    return spec.build(groups, optim.settings, device)
