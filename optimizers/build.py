"""Build a run's optimizer from the model's parameter roles and the resolved [optim] config.

    muon    Muon: hidden matrices orthogonalized, embed/head/scalar by its auxiliary AdamW
    scion   Scion: every role a steepest step in its own norm (Sign -> Spectral -> Sign by default)
    adamw   torch.optim.AdamW (fused on CUDA), one param group per role
    signum  sign descent with momentum, one param group per role

Each param group carries its role and its peak lr as group["initial_lr"]; schedules scale from it.
One optimizer object trains the whole model, with one state_dict.
"""

from __future__ import annotations

import torch

from optimizers.defaults import ROLES
from optimizers.muon import Muon
from optimizers.scion import Scion
from optimizers.signum import Signum


def _role_lr(cfg, role: str) -> float:
    lr = getattr(cfg, role).lr
    return cfg.lr if lr is None else lr


def build_optimizer(params_by_role: dict, cfg, device: torch.device) -> torch.optim.Optimizer:
    """params_by_role: {"embed": [...], "hidden": [...], "head": [...], "scalar": [...]};
    cfg: a resolved training.config.OptimConfig."""
    groups = []
    for role in ROLES:
        if not params_by_role.get(role):
            continue
        rc = getattr(cfg, role)
        groups.append(dict(params=params_by_role[role], role=role, lr=_role_lr(cfg, role),
                           weight_decay=rc.weight_decay, norm=rc.norm, scale=rc.scale))
    steps = cfg.ns_steps or None
    if cfg.name == "muon":
        for g in groups:
            g["algorithm"] = "muon" if g.pop("norm") == "spectral" else "adamw"
            g.pop("scale")
        opt = Muon(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, method=cfg.orthogonalize, steps=steps,
                   backend=cfg.backend, shape_scale=cfg.shape_scale, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
    elif cfg.name == "scion":
        for g in groups:
            g["transposed"] = g["role"] == "embed"  # tables are (vocab, dim): maps from one-hot vectors
        opt = Scion(groups, momentum=cfg.momentum, constrained=cfg.constrained, method=cfg.orthogonalize,
                    steps=steps, backend=cfg.backend, light=cfg.light)
        if cfg.scion_init:
            opt.init_parameters()
    elif cfg.name == "adamw":
        for g in groups:
            del g["norm"], g["scale"]
        opt = torch.optim.AdamW(groups, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, fused=device.type == "cuda")
    elif cfg.name == "signum":
        for g in groups:
            del g["norm"], g["scale"]
        opt = Signum(groups, momentum=cfg.momentum)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    return opt
