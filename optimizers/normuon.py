"""NorMuon (Li et al., 2025): Muon's orthogonalized update, then per-neuron second-moment normalization.

For each hidden matrix, after Muon's update U = s(d_out, d_in)·orth(D) (momentum, Nesterov,
orthogonalization and shape scale: optimizers/muon.py), with v a running average of U's squared
rows (Adafactor-style: one number per row):

    v <- β2·v + (1 − β2)·mean_j(U_ij²)          per row i (per column j when d_out < d_in, "auto")
    Û = U / √max(v, ε)
    W <- (1 − lr·λ)·W − lr · (‖U‖_F / ‖Û‖_F)·Û    rescaled to Muon's update norm

The normalization evens out the rows' update sizes that orthogonalization leaves uneven; the
rescaling keeps Muon's step size, so Muon's learning rates carry over. normalize = "off" is Muon
itself. "auto" (the track-3 scripts') normalizes along the longer side: rows when d_out >= d_in,
else columns; "rows" is the paper's per-neuron choice.

The other roles: Muon's auxiliary AdamW. Sharding, batching and checkpoints as Muon's (the second
moment lives with the momentum on the matrix's owner).

Config: `[optim] name = "normuon"`, settings in `[optim.normuon]` (NorMuonConfig: MuonConfig's keys
and defaults, except where track-3 results #8/#10 differ, plus beta2, normalize and normalize_eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optimizers.auxiliary import role_groups
from optimizers.muon import Muon, MuonConfig
from optimizers.spec import OptimizerSpec, Role, check_choice, check_positive, check_range

NORMALIZE = ("auto", "rows", "columns", "off")
LR = 0.035  # optim.lr: the hidden matrices' learning rate (track-3 result #10)


@dataclass(frozen=True)
class NorMuonConfig(MuonConfig):
    """[optim.normuon]. Hidden matrices: modded-nanogpt track-3 result #10 (NorMuon, 3,250 steps to
    3.28: lr 0.035, weight decay 0.025, momentum 0.95 Nesterov without warm-up, β2 0.95, ε 1e-10,
    normalization along the longer side; #8 has the same β2, momentum and normalization). Other
    roles and the orthogonalization: Muon's defaults (#10 ran 12 steps of the modular quintic,
    orthogonalize = "modular_quintic", ns_steps = 12, as its Muon baseline did)."""

    momentum_warmup_steps: int = 0  # #10: no momentum warm-up
    beta2: float = 0.95  # the running average of the squared rows (#8, #10)
    normalize: str = "auto"  # auto (rows if d_out >= d_in, else columns; #10) | rows | columns | off (= Muon)
    normalize_eps: float = 1e-10  # floor of v (#10)
    hidden: Role = Role("spectral", weight_decay=0.025)  # #10's weight decay

    def check(self) -> None:
        super().check()
        check_range("beta2", self.beta2, 0.0, 1.0)
        check_choice("normalize", self.normalize, NORMALIZE)
        check_positive("normalize_eps", self.normalize_eps)


def normalized_axis(shape, normalize: str) -> int:
    """The dimension averaged over: -1 gives one number per row, -2 one per column."""
    if normalize == "auto":
        return -1 if shape[-2] >= shape[-1] else -2
    return {"rows": -1, "columns": -2}[normalize]


def normuon_normalize(U: Tensor, v: Tensor, beta2: float, eps: float, axis: int) -> Tensor:
    """v <- β2·v + (1 − β2)·mean(U², axis);  Û = U / √max(v, ε);  return (‖U‖_F / ‖Û‖_F)·Û
    (norms per matrix of a batch). v is updated in place."""
    v.lerp_(U.to(v.dtype).square().mean(dim=axis, keepdim=True), 1 - beta2)
    U_hat = U * v.clamp_min(eps).rsqrt().to(U.dtype)
    norms = U.norm(dim=(-2, -1), keepdim=True) / U_hat.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)
    return U_hat * norms


class NorMuon(Muon):
    """Muon (every argument of Muon) whose "muon" groups also normalize their updates: beta2, normalize,
    normalize_eps; every default NorMuonConfig's (a group may override any)."""

    settings_class = NorMuonConfig

    def __init__(self, params, lr: float = LR, **settings):
        super().__init__(params, lr, **settings)
        for group in self.param_groups:
            if group["normalize"] not in NORMALIZE:
                raise ValueError(f"unknown normalize {group['normalize']!r}; choose from {', '.join(NORMALIZE)}")

    def sharded_state(self, group: dict, p: Tensor) -> dict[str, Tensor]:
        state = super().sharded_state(group, p)
        if group["normalize"] != "off":
            shape = list(p.shape)
            shape[normalized_axis(p.shape, group["normalize"])] = 1
            state["second_moment"] = torch.zeros(shape, dtype=torch.promote_types(p.dtype, torch.float32),
                                                 device=p.device)
        return state

    def updates(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Muon's updates, each normalized (its second moment updated)."""
        updates = super().updates(group, params, grads)
        if group["normalize"] == "off":
            return updates
        out = []
        for p, u in zip(params, updates):
            state = self.state[p]
            if "second_moment" not in state:
                state["second_moment"] = self.sharded_state(group, p)["second_moment"]
            axis = normalized_axis(p.shape, group["normalize"])
            out.append(normuon_normalize(u, state["second_moment"], group["beta2"], group["normalize_eps"], axis))
        return out


def build(groups: list[dict], s: NorMuonConfig, device: torch.device) -> NorMuon:
    """As Muon's build: hidden is NorMuon's, the other roles its auxiliary AdamW or Prodigy."""
    return NorMuon(role_groups(groups, "muon"), **s.group_settings())


SPEC = OptimizerSpec(
    name="normuon", lr=LR, settings=NorMuonConfig, build=build,
    about="NorMuon: Muon's orthogonalized update (spectral norm) with per-row second-moment normalization, "
          "rescaled to Muon's norm, for hidden matrices; AdamW (or Prodigy) for the rest",
)
