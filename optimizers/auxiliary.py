"""The auxiliary optimizer of Muon, NorMuon and Shampoo: what trains the roles they do not
orthogonalize (embeddings, head, scalars): AdamW, or Prodigy (optimizers/prodigy.py).

AdamW, for each tensor W with gradient g, at step t (from 1):

    m <- β1·m + (1 − β1)·g,   v <- β2·v + (1 − β2)·g²
    W <- (1 − lr·λ)·W − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)

`adamw_step` is that equation for one tensor (the reference); `adamw_foreach` runs it for a list with
torch's foreach kernels, in the same order of operations (the same numbers); `adamw_fused` with
torch's fused AdamW kernel (one pass over each tensor instead of about seven: used on CUDA, where
the embeddings' passes cost), equal to the reference up to rounding (√v/√(1 − β2ᵗ) instead of
√(v/(1 − β2ᵗ))). The state of a tensor is {"step": int, "exp_avg", "exp_avg_sq"} in all three. A group's
(β1, β2) and ε are
its "adam_betas" and "adam_eps" (the settings of Muon, NorMuon and Shampoo name them so).
"""

from __future__ import annotations

import torch
from torch import Tensor

from optimizers.prodigy import PRODIGY, ProdigyConfig, prodigy_metrics, prodigy_step
from optimizers.spec import ADAMW

# The roles Muon (and NorMuon, Shampoo) do not orthogonalize: AdamW (role norm "adamw"), or Prodigy (role norm
# "prodigy": optimizers/prodigy.py with ProdigyConfig's defaults; set that role's lr to 1, the multiplier of d).
AUXILIARY = (ADAMW, PRODIGY)


def adamw_step(p: Tensor, grad: Tensor, state: dict, lr: float, betas, eps: float, weight_decay: float) -> None:
    """One AdamW step for one tensor, in place (the equation in the module docstring)."""
    _count_step(p, state)
    beta1, beta2 = betas
    m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
    m.lerp_(grad, 1 - beta1)
    v.lerp_(grad.square(), 1 - beta2)
    denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
    if weight_decay:
        p.mul_(1 - lr * weight_decay)
    p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))


def _count_step(p: Tensor, state: dict) -> None:
    if "step" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1


def _by_step(params: list[Tensor], states: list[dict]) -> dict[tuple, list[int]]:
    """Indices of the tensors that took the same number of steps (they share a bias correction), and,
    for the fused kernel, live on one device in one dtype."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, state) in enumerate(zip(params, states)):
        groups.setdefault((state["step"], p.device, p.dtype), []).append(i)
    return groups


def adamw_foreach(params: list[Tensor], grads: list[Tensor], states: list[dict], lr: float, betas, eps: float,
                  weight_decay: float) -> None:
    """`adamw_step` for many tensors at once with torch's foreach kernels (a few fused launches
    instead of several per tensor), in the same order of operations, so the same numbers."""
    for p, state in zip(params, states):
        _count_step(p, state)
    beta1, beta2 = betas
    for (t, _, _), idx in _by_step(params, states).items():
        ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
        ms, vs = [states[i]["exp_avg"] for i in idx], [states[i]["exp_avg_sq"] for i in idx]
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_lerp_(vs, torch._foreach_mul(gs, gs), 1 - beta2)
        denom = torch._foreach_div(vs, 1 - beta2**t)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        if weight_decay:
            torch._foreach_mul_(ps, 1 - lr * weight_decay)
        torch._foreach_addcdiv_(ps, ms, denom, value=-lr / (1 - beta1**t))


def adamw_fused(params: list[Tensor], grads: list[Tensor], states: list[dict], lr: float, betas, eps: float,
                weight_decay: float) -> None:
    """`adamw_step` for many tensors with torch's fused AdamW kernel (torch._fused_adamw_): each tensor read
    and written once. The kernel takes the step count as a tensor; a fill kernel makes it on the device
    (no host-to-device copy, no synchronization)."""
    for p, state in zip(params, states):
        _count_step(p, state)
    beta1, beta2 = betas
    for (t, device, _), idx in _by_step(params, states).items():
        step = torch.full((), float(t), dtype=torch.float32, device=device)
        torch._fused_adamw_([params[i] for i in idx], [grads[i] for i in idx],
                            [states[i]["exp_avg"] for i in idx], [states[i]["exp_avg_sq"] for i in idx], [],
                            [step] * len(idx), lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
                            amsgrad=False, maximize=False)


def auxiliary_step(group: dict, state: dict) -> None:
    """One step of an auxiliary group: Prodigy's for algorithm "prodigy", else AdamW's (fused on CUDA, foreach
    elsewhere, which keeps CPU results equal to the reference's bit for bit)."""
    if group["algorithm"] == PRODIGY:
        prodigy_step(group, state)
        return
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    step = adamw_fused if params[0].is_cuda else adamw_foreach
    step(params, [p.grad for p in params], [state[p] for p in params], group["lr"], group["adam_betas"],
         group["adam_eps"], group["weight_decay"])


def auxiliary_metrics(groups: list[dict]) -> dict[str, float]:
    """The distance estimate d of each Prodigy group (empty without one)."""
    return prodigy_metrics([g for g in groups if g["algorithm"] == PRODIGY])


def decayed_step(group: dict, p: Tensor, update: Tensor) -> None:
    """W <- (1 − lr·λ)·W − lr·U: the step of Muon, NorMuon and Shampoo, given their update U."""
    if group["weight_decay"]:
        p.mul_(1 - group["lr"] * group["weight_decay"])
    p.add_(update.to(p.dtype), alpha=-group["lr"])


def role_groups(groups: list[dict], matrix_algorithm: str) -> list[dict]:
    """The registry's role groups made the optimizer's: the "spectral" role (hidden) gets
    `matrix_algorithm`, the others their norm's auxiliary algorithm (AUXILIARY), with Prodigy's settings."""
    for g in groups:
        norm = g.pop("norm")
        g["algorithm"] = matrix_algorithm if norm == "spectral" else norm
        g.pop("scale")
        if norm == PRODIGY:
            g.update(ProdigyConfig().group_settings())
    return groups
