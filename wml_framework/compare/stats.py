"""Mean ± std over seeds and paired differences with a 95% confidence interval (Student's t).

Why paired: members of one seed share initial weights, data order and teacher, so the difference
between two methods on the same seed removes most seed-to-seed noise; the interval is that of the
mean difference over seeds, and "within noise" means it contains 0.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

__all__ = ["mean_std", "paired_difference"]


def mean_std(values: Sequence[float]) -> dict:
    """{"mean", "std" (sample, n−1; None for one value), "n"} of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    m = sum(xs) / len(xs)
    std = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": m, "std": std, "n": len(xs)}


def paired_difference(values: Sequence[Optional[float]], baseline: Sequence[Optional[float]],
                      confidence: float = 0.95) -> dict:
    """Mean of (value − baseline) over the seeds both have, its 95% CI and whether 0 is inside.

    With one seed there is no interval (``low``/``high`` None) and nothing can be called noise-free."""
    from scipy import stats

    diffs = [float(a) - float(b) for a, b in zip(values, baseline)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    summary = mean_std(diffs)
    out = {"mean": summary["mean"], "std": summary["std"], "n": summary["n"], "low": None, "high": None,
           "within_noise": True}
    if summary["n"] >= 2:
        half = stats.t.ppf(0.5 + confidence / 2, summary["n"] - 1) * summary["std"] / math.sqrt(summary["n"])
        out["low"], out["high"] = summary["mean"] - half, summary["mean"] + half
        out["within_noise"] = bool(out["low"] <= 0.0 <= out["high"])
    return out
