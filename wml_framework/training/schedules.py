"""Step-size schedules shared by the outer (η) and inner (learning-rate) loops.

Why pure Python: the schedule is evaluated once per step on plain numbers; keeping it free of
torch lets the trainer, the updaters and the docs use the very same function.
"""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, peak: float, floor: float, warmup: int, decay_iters: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor`` at ``decay_iters``, then ``floor``.

    The nanoGPT schedule the seed card was trained with, with a warm-up that never returns 0:
    step ``s < warmup`` gives ``peak · (s+1)/(warmup+1)``; from ``warmup`` to ``decay_iters`` the
    value follows ``floor + ½(1 + cos(π r))(peak − floor)`` with ``r`` going from 0 to 1; past
    ``decay_iters`` (or when ``decay_iters <= warmup``, right after the warm-up) it stays at ``floor``.
    """
    if step < 0:
        raise ValueError(f"warmup_cosine: step must be >= 0, got {step}")
    if warmup < 0 or decay_iters < 0:
        raise ValueError(f"warmup_cosine: warmup ({warmup}) and decay_iters ({decay_iters}) must be >= 0")
    if floor > peak:
        raise ValueError(f"warmup_cosine: floor ({floor}) must not exceed peak ({peak})")
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step >= decay_iters:
        return floor
    ratio = (step - warmup) / (decay_iters - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)
