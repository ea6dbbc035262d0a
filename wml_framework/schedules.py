"""Learning-rate style schedules shared by the peers' optimizer, the teacher and ω's step."""

from __future__ import annotations

import math


def warmup_cosine(step: int, peak: float, floor: float, warmup: int, decay_iters: int) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine decay to ``floor``
    at ``decay_iters``, constant afterwards (nanoGPT's schedule; the seed card's names)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step >= decay_iters:
        return floor
    span = max(1, decay_iters - warmup)
    ratio = min(1.0, max(0.0, (step - warmup) / span))
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)
