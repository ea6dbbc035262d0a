"""Input validation shared by every public function of ``wml_reference``.

Why one module: the oracle must turn every bad input into a ``ValueError`` that says what is
wrong (never a silent NaN), and the rules must be the same in every function, so each check
lives here once and the loss/hypergradient modules only call it.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

IGNORE_INDEX = -100
"""Label value that marks a position as not scored (method.md §2)."""

SIMPLEX_TOL = 1e-6
"""How far ``sum(omega)`` may be from 1 and still count as a point of the simplex."""


def scalar(x, name: str) -> float:
    """A real, finite Python/NumPy number (bools and arrays of size != 1 are refused)."""
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{name} must be a real number, got a bool ({x!r})")
    if isinstance(x, np.ndarray):
        if x.size != 1:
            raise ValueError(f"{name} must be a scalar, got an array of shape {x.shape}")
        x = x.reshape(()).item()
    if not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def temperature(T) -> float:
    """Temperature T > 0 (method.md §2)."""
    T = scalar(T, "temperature T")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    return T


def unit_interval(x, name: str) -> float:
    """A weight in [0, 1] (alpha, alpha_kd)."""
    x = scalar(x, name)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {x}")
    return x


def nonnegative(x, name: str) -> float:
    """A step size >= 0 (eta, gamma)."""
    x = scalar(x, name)
    if x < 0:
        raise ValueError(f"{name} must be >= 0, got {x}")
    return x


def float_array(a, name: str) -> np.ndarray:
    """``a`` as a finite float64 array."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of real numbers ({exc})") from None
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    return arr


def logits(z, name: str = "logits") -> np.ndarray:
    """Finite float64 logits of shape (..., V) with V >= 1."""
    arr = float_array(z, name)
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1, got shape {arr.shape}")
    return arr


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def labels(y, z_shape: tuple, name: str = "labels") -> tuple[np.ndarray, np.ndarray, int]:
    """Check labels against logits of shape ``z_shape`` = (..., V).

    Returns (flat labels, flat boolean mask of scored positions, n scored positions).
    Ignored positions (-100) get label 0 in the flat array so they can index safely.
    """
    arr = np.asarray(y)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    lead, V = tuple(z_shape[:-1]), z_shape[-1]
    if arr.shape != lead:
        raise ValueError(
            f"shape mismatch: {name} has shape {arr.shape} but logits of shape {tuple(z_shape)} "
            f"need labels of shape {lead}"
        )
    flat = arr.reshape(-1).astype(np.int64)
    mask = flat != IGNORE_INDEX
    bad = mask & ((flat < 0) | (flat >= V))
    if np.any(bad):
        raise ValueError(
            f"{name} out of range: {int(bad.sum())} label(s) such as {int(flat[bad][0])} are outside "
            f"[0, V={V}) and are not the ignore index {IGNORE_INDEX}"
        )
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"all {name} are ignored ({IGNORE_INDEX}): no scored position (n = 0)")
    return np.where(mask, flat, 0), mask, n


def peers(logit_list, name: str = "logits") -> list[np.ndarray]:
    """M >= 1 peer logit arrays, all of one shape (same token count and vocabulary)."""
    if isinstance(logit_list, np.ndarray):
        if logit_list.ndim < 3:
            raise ValueError(
                f"{name} must be a list of M peer arrays or one (M, n, V) array, got an array of shape {logit_list.shape}"
            )
        items = list(logit_list)
    else:
        try:
            items = list(logit_list)
        except TypeError:
            raise ValueError(f"{name} must be a list of M peer logit arrays") from None
    if len(items) == 0:
        raise ValueError(f"{name} must hold at least one peer (M >= 1), got none")
    arrs = [logits(z, f"{name}[{i}]") for i, z in enumerate(items)]
    for i, z in enumerate(arrs[1:], start=1):
        if z.shape != arrs[0].shape:
            raise ValueError(
                f"peers disagree in shape (token count or vocabulary): {name}[0] has shape "
                f"{arrs[0].shape} but {name}[{i}] has shape {z.shape}"
            )
    return arrs


def vector(v, M: int, name: str) -> np.ndarray:
    """A finite 1-D float64 vector of length M."""
    arr = float_array(v, name)
    if arr.ndim != 1 or arr.shape[0] != M:
        raise ValueError(f"{name} must be a vector of length M = {M} (one entry per peer), got shape {arr.shape}")
    return arr


def omega(w, M: int | None, simplex: bool = True) -> np.ndarray:
    """Peer weights: length M, finite and (unless ``simplex=False``) on the probability simplex.

    ``M=None`` takes M from ``w`` itself (it must still be a non-empty 1-D vector).
    """
    if M is None:
        arr = float_array(w, "omega")
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(f"omega must be a non-empty 1-D vector (one weight per peer), got shape {arr.shape}")
        M = arr.shape[0]
    arr = vector(w, M, "omega")
    if simplex:
        if np.any(arr < 0):
            raise ValueError(f"omega must lie on the simplex: negative entries {arr[arr < 0].tolist()}")
        s = float(arr.sum())
        if abs(s - 1.0) > SIMPLEX_TOL:
            raise ValueError(f"omega must lie on the simplex: entries sum to {s!r}, not 1 (tolerance {SIMPLEX_TOL})")
    return arr


def _array_list(seq, name: str) -> list[np.ndarray]:
    if isinstance(seq, np.ndarray) or not isinstance(seq, Sequence):
        raise ValueError(f"{name} must be a list with one 2-D array per peer")
    return [float_array(a, f"{name}[{i}]") for i, a in enumerate(seq)]


def linear_peers(X, W, name_X: str = "X") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inputs X_i (n, d_i) and weights W_i (d_i, V) of M linear-softmax peers z_i = X_i @ W_i."""
    Xs, Ws = _array_list(X, name_X), _array_list(W, "W")
    if len(Ws) == 0:
        raise ValueError("W must hold at least one peer (M >= 1), got none")
    if len(Xs) != len(Ws):
        raise ValueError(f"{name_X} has {len(Xs)} peer(s) but W has {len(Ws)}: need one input matrix per peer")
    for i, (x, w) in enumerate(zip(Xs, Ws)):
        if w.ndim != 2:
            raise ValueError(f"W[{i}] must be 2-D (d_i, V), got shape {w.shape}")
        if x.ndim != 2:
            raise ValueError(f"{name_X}[{i}] must be 2-D (n, d_i), got shape {x.shape}")
        if x.shape[1] != w.shape[0]:
            raise ValueError(
                f"shape mismatch: {name_X}[{i}] has width {x.shape[1]} but W[{i}] has {w.shape[0]} rows"
            )
        if x.shape[0] != Xs[0].shape[0]:
            raise ValueError(
                f"peers disagree in token count: {name_X}[0] has {Xs[0].shape[0]} rows but {name_X}[{i}] has {x.shape[0]}"
            )
        if w.shape[1] != Ws[0].shape[1]:
            raise ValueError(f"peers disagree in vocabulary: W[0] has V = {Ws[0].shape[1]} but W[{i}] has V = {w.shape[1]}")
    return Xs, Ws
