"""Schedules as pure functions of the step, so that a resumed run follows the same curve.

lr multiplier (applied to every param group's initial_lr):

    warmup   (step < W):            (step + 1) / W
    constant                         1
    cooldown (last C = cooldown_frac * steps steps): linear from 1 to final_lr_frac at the last step

The momentum warms up as the optimizer's settings say (`momentum_at`: Muon's ramps from
momentum_warmup_from to momentum over momentum_warmup_steps). The attention window grows linearly
from one 128-token block to model.window over training.
"""

import math

BLOCK = 128


def lr_multiplier(step: int, steps: int, warmup_steps: int, cooldown_frac: float, final_lr_frac: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    cooldown = cooldown_frac * steps
    left = steps - step  # steps remaining, including this one
    if cooldown > 0 and left < cooldown:
        w = max(left, 0) / cooldown  # 1 -> 0
        return w + (1 - w) * final_lr_frac
    return 1.0


def window_at(step: int, steps: int, window: int, warmup: bool) -> int:
    """Attention window (tokens) for this step: 0 means full causal attention. With warm-up it grows
    in whole 128-token blocks, ceil(window * step / steps / 128) * 128, from one block, and never
    beyond `window` itself."""
    if window <= 0 or not warmup:
        return window
    grown = math.ceil(window * step / steps / BLOCK) * BLOCK
    return min(window, max(BLOCK, grown))


def lr_at(step: int, cfg) -> float:
    """The lr multiplier of a run's config at `step`."""
    s = cfg.schedule
    return lr_multiplier(step, s.steps, s.warmup_steps, s.cooldown_frac, s.final_lr_frac)


def apply(optimizer, step: int, cfg) -> None:
    """Set the lr (and a warming-up momentum) of every param group for `step`."""
    mult = lr_at(step, cfg)
    momentum = cfg.optim.settings.momentum_at(step)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * mult
        if momentum is not None and "momentum" in group:
            group["momentum"] = momentum
