"""How far apart peers' predictive distributions are: the Jensen–Shannon divergence.

Why this exists: ``wml compare`` reports how alike a run's peers became (their mean pairwise JS
divergence on held-out text); this is the float64 oracle the torch measurement is checked against.
Natural logarithm, so values are in nats and lie in [0, ln 2]. Positions labelled -100 are not
scored, as in every loss here.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp

from . import _checks

__all__ = ["js_divergence", "mean_pairwise_js"]


def _js_rows(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """JS(softmax(za_t), softmax(zb_t)) of every row t, from log-probabilities (no 0·log 0)."""
    la, lb = log_softmax(za, axis=-1), log_softmax(zb, axis=-1)
    lm = logsumexp(np.stack([la, lb]), axis=0) - np.log(2.0)
    kl_a = np.sum(np.exp(la) * (la - lm), axis=-1)
    kl_b = np.sum(np.exp(lb) * (lb - lm), axis=-1)
    return 0.5 * (kl_a + kl_b)


def js_divergence(za, zb, y=None) -> float:
    """Mean over scored positions of JS(P_t, Q_t) = ½ KL(P_t ‖ M_t) + ½ KL(Q_t ‖ M_t), M_t = ½(P_t + Q_t),
    with P_t = softmax(za_t), Q_t = softmax(zb_t); logits (..., V); ``y`` (...) marks scored positions
    (label != -100), every position when None. In nats."""
    za, zb = _checks.logits(za, "za"), _checks.logits(zb, "zb")
    _checks.same_shape(za, zb, "za", "zb")
    rows = _js_rows(za.reshape(-1, za.shape[-1]), zb.reshape(-1, zb.shape[-1]))
    if y is None:
        return float(rows.mean())
    _, mask, n = _checks.labels(y, za.shape, "y")
    return float(rows[mask].sum() / n)


def mean_pairwise_js(logits, y=None) -> float:
    """Mean of :func:`js_divergence` over the M(M−1)/2 unordered pairs of M ≥ 2 peers' logits
    (a list of arrays of one shape, or one (M, ..., V) array)."""
    arrs = _checks.peers(logits)
    if len(arrs) < 2:
        raise ValueError(f"a pairwise divergence needs at least 2 peers, got {len(arrs)}")
    pairs = [(i, j) for i in range(len(arrs)) for j in range(i + 1, len(arrs))]
    return float(np.mean([js_divergence(arrs[i], arrs[j], y) for i, j in pairs]))
