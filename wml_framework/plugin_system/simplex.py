"""What a valid ω is: M finite, non-negative weights that sum to 1 (within ``SIMPLEX_TOL``).

Why one place: the run's guard and ``wml verify`` must accept and refuse the same ω, with the same
words; each only decides what a refusal means to it (a plugin error, a skipped step, a failed check).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["SIMPLEX_TOL", "OffSimplex", "on_simplex"]

SIMPLEX_TOL = 1e-6  # |Σω − 1| accepted from an updater (the run then renormalises exactly)


class OffSimplex(ValueError):
    """ω is not a point of the simplex; ``finite`` is False when a weight is NaN or infinite
    (usually a diverging peer rather than a wrong updater)."""

    def __init__(self, problem: str, finite: bool = True):
        super().__init__(problem)
        self.finite = finite


def on_simplex(omega: Any, num_peers: int) -> Tensor:
    """ω as a float64 CPU tensor, as given (not renormalised); :class:`OffSimplex` says why it is not
    a point of the simplex of ``num_peers`` weights."""
    if not isinstance(omega, Tensor):
        raise OffSimplex(f"ω must be a tensor, got {type(omega).__name__}")
    if tuple(omega.shape) != (num_peers,):
        raise OffSimplex(f"ω has shape {tuple(omega.shape)}, expected ({num_peers},): one weight per peer")
    w = omega.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise OffSimplex(f"ω is not finite: {w.tolist()}", finite=False)
    if bool((w < 0).any()):
        raise OffSimplex(f"ω has negative weights: {w.tolist()}")
    if abs(float(w.sum()) - 1.0) > SIMPLEX_TOL:
        raise OffSimplex(f"ω sums to {float(w.sum()):.6g}, not 1: it must be a point of the simplex")
    return w
