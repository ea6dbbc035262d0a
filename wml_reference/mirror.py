"""Mirror descent on the simplex (method.md §4), the outer update of the peer weights ω.

Why log space: exp(−η g) overflows for large η·g, while log ω − η g − logsumexp(log ω − η g) never
does; a weight of exactly 0 stays 0 (log 0 = −inf is a fixed point of the update).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from . import _checks

__all__ = ["mirror_step"]


def mirror_step(omega, g, eta) -> np.ndarray:
    """One exponentiated-gradient step: ω_i ← ω_i exp(−η g_i) / Σ_k ω_k exp(−η g_k).

    ``omega`` must be on the simplex, ``g`` a finite vector of the same length, ``eta`` >= 0.
    Returns the new ω (non-negative, sums to 1).
    """
    w = _checks.omega(omega, None, simplex=True)
    g = _checks.vector(g, w.shape[0], "gradient g")
    eta = _checks.nonnegative(eta, "step size eta")
    with np.errstate(over="ignore", invalid="ignore"):
        step = eta * g
    if not np.all(np.isfinite(step)):
        raise ValueError(f"eta * g overflows float64 (eta = {eta}, max |g| = {np.max(np.abs(g))})")
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    a = logw - step
    new = np.exp(a - logsumexp(a))
    return new / new.sum()
