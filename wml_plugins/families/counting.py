"""Exact parameter counts of any Hugging Face config, without a per-family formula.

``meta_count(config)``: build the model on the ``meta`` device (no memory, a few milliseconds) and
sum ``numel`` over ``parameters()`` (tied tensors once, as everywhere in wml). Memoised per config.

``fit_counter(...)``: what the ``bayes`` search needs, a vectorised count over thousands of shapes.
For the models wml handles the count of a shape is ``A(x) + L·B(x)``, with ``A`` and ``B``
polynomials of degree at most 2 in ``x = (h, q, kv, F)`` (width, query width ``H·d``, key/value
width ``K·d``, FFN width) plus linear terms in ``d``, ``H`` and ``K``: embeddings are ``V·h``,
projections ``h·q``, MLPs ``h·F``, norms and biases linear. Their integer coefficients are fitted
from meta builds of small shapes (least squares, rounded), then checked for exact equality on the
fitting points and on further meta-built points, the base's own shape among them. A fit that is
not exact everywhere is discarded; callers then count shape by shape (``meta_count``, memoised).
"""

from __future__ import annotations

import contextlib
import json
import random
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from wml_framework.api import build_model

__all__ = ["FEATURES", "Point", "PolyCount", "config_key", "quiet", "meta_model", "meta_count", "fit_counter"]

#: the monomials of A and of B (by name): degree ≤ 2 in (h, q, kv, F), linear in d, H, K
FEATURES = ("1", "h", "q", "kv", "F", "d", "H", "K", "h*h", "q*q", "kv*kv", "F*F",
            "h*q", "h*kv", "h*F", "q*kv", "q*F", "kv*F")
FIT_POINTS, CHECK_POINTS = 48, 12
_COUNTS: dict = {}
_COUNTS_LIMIT = 200_000


@dataclass(frozen=True)
class Point:
    """One shape: layers, width, query heads, key/value heads, head size, FFN width."""

    L: int
    h: int
    H: int
    K: int
    d: int
    F: int


def config_key(config) -> str:
    """A config's identity for memoising: every setting, in a stable order."""
    return json.dumps(config.to_dict(), sort_keys=True, default=repr)


@contextlib.contextmanager
def quiet():
    """Silence transformers' config and build chatter (warnings about test-sized configs)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def meta_model(config):
    """The model of ``config`` built on the meta device (shapes only, no memory)."""
    with quiet(), torch.device("meta"):
        return build_model(config)


def meta_count(config) -> int:
    """Exactly ``sum(p.numel() for p in build_model(config).parameters())``, from a meta build."""
    key = config_key(config)
    count = _COUNTS.get(key)
    if count is None:
        count = int(sum(p.numel() for p in meta_model(config).parameters()))
        if len(_COUNTS) >= _COUNTS_LIMIT:
            _COUNTS.clear()
        _COUNTS[key] = count
    return count


def _columns(L, h, H, K, d, F) -> np.ndarray:
    """``(n, 2·len(FEATURES))`` int64: each monomial, then each monomial times L."""
    L, h, H, K, d, F = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (L, h, H, K, d, F)))
    v = dict(h=h, q=H * d, kv=K * d, F=F, d=d, H=H, K=K)
    cols = []
    for name in FEATURES:
        col = np.ones_like(h)
        if name != "1":
            for factor in name.split("*"):
                col = col * v[factor]
        cols.append(col)
    base = np.stack(cols, axis=-1)
    return np.concatenate([base, base * L[..., None]], axis=-1)


@dataclass(frozen=True)
class PolyCount:
    """``count = Σ coef_j · column_j`` over the kept columns of :func:`_columns`."""

    kept: tuple
    coef: tuple

    def __call__(self, L, h, H, K, d, F) -> np.ndarray:
        cols = _columns(L, h, H, K, d, F)[..., list(self.kept)]
        return cols @ np.asarray(self.coef, dtype=np.int64)

    def terms(self) -> dict:
        """The nonzero coefficients by monomial (``L*h*F`` …), for reading a fit."""
        names = [*FEATURES, *("L" if n == "1" else f"L*{n}" for n in FEATURES)]
        return {names[j]: c for j, c in zip(self.kept, self.coef) if c}


def _exact(poly: PolyCount, points: Sequence[Point], counts: Sequence[int]) -> bool:
    got = poly(*(np.array([getattr(p, k) for p in points]) for k in "LhHKdF"))
    return bool(np.array_equal(got, np.asarray(counts, dtype=np.int64)))


def fit_counter(draw: Callable[[random.Random], Point], count: Callable[[Point], int],
                must_check: Sequence[Point] = (), seed: int = 0) -> Optional[PolyCount]:
    """Fit the integer coefficients of the count from meta builds of points ``draw`` yields
    (``count(point)`` is the exact count of that point's model), and return the polynomial only if
    it is exact on every fitting point, on ``CHECK_POINTS`` further points and on ``must_check``.
    None when it is not (the count is no such polynomial), or when too few points can be built."""
    rng = random.Random(seed)
    fit, counts, seen = [], [], set()
    for _ in range(FIT_POINTS * 4):
        if len(fit) >= FIT_POINTS:
            break
        p = draw(rng)
        if p in seen:
            continue
        seen.add(p)
        try:
            counts.append(count(p))
        except Exception:  # noqa: BLE001 - a shape the family cannot build is not a fitting point
            continue
        fit.append(p)
    if len(fit) < FIT_POINTS // 2:
        return None
    X = _columns(*(np.array([getattr(p, k) for p in fit]) for k in "LhHKdF"))
    kept = []                      # drop columns that repeat an earlier one on every point (K = H, h = q …)
    for j in range(X.shape[1]):
        if not any(np.array_equal(X[:, j], X[:, i]) for i in kept):
            kept.append(j)
    A = X[:, kept].astype(np.float64)
    scale = np.abs(A).max(axis=0)
    sol, *_ = np.linalg.lstsq(A / scale, np.asarray(counts, dtype=np.float64), rcond=None)
    coef = tuple(int(c) for c in np.rint(sol / scale))
    poly = PolyCount(kept=tuple(kept), coef=coef)
    if not _exact(poly, fit, counts):
        return None
    checks = list(dict.fromkeys(must_check))
    for _ in range(CHECK_POINTS * 4):
        if len(checks) >= CHECK_POINTS + len(must_check):
            break
        p = draw(rng)
        if p not in seen and p not in checks:
            checks.append(p)
    try:
        check_counts = [count(p) for p in checks]
    except Exception:  # noqa: BLE001 - a point the family cannot build: the fit is not shown exact
        return None
    return poly if _exact(poly, checks, check_counts) else None
