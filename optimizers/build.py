"""Build the optimizers of a run from the model's parameter roles and the [optim] config.

optim.name = "muon":  Muon for role "hidden" (lr = optim.lr), AdamW for "embed", "head" and
                      "scalar" (lrs optim.embed_lr, optim.head_lr, optim.scalar_lr).
optim.name = "adamw": AdamW for every role, hidden matrices at optim.lr with optim.weight_decay.

Every param group records its peak lr as group["initial_lr"]; schedules scale from it.
"""

import torch

from optimizers.muon import Muon


def build_optimizers(params_by_role: dict, cfg, device: torch.device) -> list[torch.optim.Optimizer]:
    """params_by_role: {"embed": [...], "hidden": [...], "head": [...], "scalar": [...]}."""
    adam_groups = [
        dict(params=params_by_role["embed"], lr=cfg.embed_lr, role="embed"),
        dict(params=params_by_role["head"], lr=cfg.head_lr, role="head"),
        dict(params=params_by_role["scalar"], lr=cfg.scalar_lr, role="scalar"),
    ]
    optimizers = []
    if cfg.name == "muon":
        muon = Muon(params_by_role["hidden"], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                    ns_steps=cfg.ns_steps, weight_decay=cfg.weight_decay)
        muon.param_groups[0]["role"] = "hidden"
        optimizers.append(muon)
    elif cfg.name == "adamw":
        adam_groups.append(dict(params=params_by_role["hidden"], lr=cfg.lr, role="hidden", weight_decay=cfg.weight_decay))
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    adam_groups = [g for g in adam_groups if g["params"]]
    adamw = torch.optim.AdamW(
        adam_groups, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.adam_weight_decay,
        fused=device.type == "cuda",
    )
    optimizers.insert(0, adamw)
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers
