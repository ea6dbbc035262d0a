"""The step-size schedule of method.md §4/§5 (linear warm-up, then cosine decay, then a floor),
written from the formula so that torch plugins' step sizes can be checked against it.

Step s (counting from 0): s < w gives peak·(s+1)/(w+1); w ≤ s < D gives
floor + (peak − floor)·(1 + cos(π (s − w)/(D − w)))/2; s ≥ D gives floor.
"""

from __future__ import annotations

import math

from . import _checks

__all__ = ["warmup_cosine"]


def warmup_cosine(step, peak, floor, warmup, decay_iters) -> float:
    """η (or the learning rate) at ``step`` of the warm-up + cosine schedule."""
    s = _checks.nonnegative(step, "step")
    peak = _checks.nonnegative(peak, "peak")
    floor = _checks.nonnegative(floor, "floor")
    w = _checks.nonnegative(warmup, "warmup")
    D = _checks.nonnegative(decay_iters, "decay_iters")
    if floor > peak:
        raise ValueError(f"floor ({floor}) must not exceed peak ({peak})")
    phase = "warmup" if s < w else ("floor" if s >= D else "cosine")
    if phase == "warmup":
        return peak * (s + 1.0) / (w + 1.0)
    if phase == "floor":
        return floor
    progress = (s - w) / (D - w)
    return floor + (peak - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0
