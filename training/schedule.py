"""Schedules as pure functions of the step, so that a resumed run follows the same curve.

lr multiplier (Trainer.set_schedules, the one place it is applied: each role's lr = its peak lr x this):

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


# -- validation and gradient accumulation, as functions of the config ----------------------------------------

def grad_accum_steps(cfg, world_size: int) -> int:
    """Forward/backward passes per rank per optimizer step."""
    rows = cfg.data.batch_tokens // cfg.model.seq_len
    return rows // (world_size * cfg.data.micro_batch_size)


EVAL_AUTO_TOKENS = 16384  # eval.batch_size = 0: at most this many tokens per rank per forward pass (>= 1 row)


def eval_batch_size(cfg, world_size: int) -> int:
    """Rows per rank per validation forward pass: eval.batch_size, or for 0 the largest number of rows
    that holds at most EVAL_AUTO_TOKENS tokens (at least one row) and divides the rows of both the
    final and the interval validation."""
    e = cfg.eval
    if e.batch_size:
        return e.batch_size
    per_rank = world_size * cfg.eval_seq_len
    rows = math.gcd(e.tokens // per_rank, interval_tokens(cfg) // per_rank)
    cap = max(1, EVAL_AUTO_TOKENS // cfg.eval_seq_len)
    return max(d for d in range(1, min(rows, cap) + 1) if rows % d == 0) if rows else 1


def interval_tokens(cfg) -> int:
    """Tokens of the validations before the final one."""
    return min(cfg.eval.interval_tokens or cfg.eval.tokens, cfg.eval.tokens)


def eval_tokens(cfg, step: int) -> int:
    """Validation tokens at `step`: all of eval.tokens at the end, the interval tokens before."""
    return cfg.eval.tokens if step >= cfg.schedule.steps else interval_tokens(cfg)


def eval_due(cfg, step: int) -> bool:
    """Whether to validate after `step` steps: at the end; every eval.every steps (at step 0 too when
    eval.at_start); every eval.every_late steps in the last eval.late_frac of the run."""
    e, steps = cfg.eval, cfg.schedule.steps
    if step >= steps:
        return True
    if step == 0:
        return e.at_start and e.every > 0
    if e.every_late and step >= steps * (1 - e.late_frac) and step % e.every_late == 0:
        return True
    return e.every > 0 and step % e.every == 0
