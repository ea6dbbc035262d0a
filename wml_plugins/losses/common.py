"""Shared plumbing of the loss plugins: scored-token selection, compute precision, row dots.

Why here: every loss must agree on what "a mean over scored tokens" means (labels of -100 are
neither scored nor counted), on the precision of its softmaxes (float32 at least, so bf16 logits
of ±1e4 stay finite) and on the shapes it accepts ((B, T, V) or (n, V) logits).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from wml_framework.api import IGNORE_INDEX

__all__ = ["compute_dtype", "ScoredLogits", "check_labels", "scored_logits", "select_rows_like", "unscore",
           "full_precision", "autocast_off", "rowdot", "omega_vector", "OmegaFree"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything narrower (bf16, fp16, float32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class ScoredLogits:
    """The peers' logits restricted to scored rows, in compute precision.

    ``logits[i]`` is ``(n, V)`` with ``n`` the number of scored tokens, ``labels`` is ``(n,)``;
    ``n_scored`` is the divisor of every token mean (at least 1, so an all-ignored batch gives 0).
    """

    logits: list
    labels: Tensor
    n_scored: int
    dtype: torch.dtype


def _scored_rows(labels: Tensor, V: int) -> Tensor | None:
    """Flat index of the scored rows, or None when every row is scored (no copy needed)."""
    flat = labels.reshape(-1)
    mask = flat != IGNORE_INDEX
    if bool(mask.all()):
        return None
    return mask.nonzero().squeeze(-1)


def check_labels(labels: Tensor, shape: torch.Size, who: str) -> None:
    if labels.shape != shape[:-1]:
        raise ValueError(f"{who}: labels of shape {tuple(labels.shape)} do not match logits of shape "
                         f"{tuple(shape)} (expected {tuple(shape[:-1])})")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{who}: labels must be integers, got {labels.dtype}")


def scored_logits(logits: Sequence[Tensor], labels: Tensor, who: str) -> ScoredLogits:
    """Flatten ``(…, V)`` logits to rows, keep the rows whose label is not -100, upcast.

    All peers must share one shape. The selection and the cast are differentiable, so
    gradients flow back to the caller's tensors (zero at ignored positions).
    """
    if len(logits) == 0:
        raise ValueError(f"{who}: needs the logits of at least one peer")
    shape = logits[0].shape
    for i, z in enumerate(logits):
        if z.shape != shape:
            raise ValueError(f"{who}: peers disagree in shape: logits[0] is {tuple(shape)}, "
                             f"logits[{i}] is {tuple(z.shape)}")
    check_labels(labels, shape, who)
    V = shape[-1]
    rows = _scored_rows(labels, V)
    flat_labels = labels.reshape(-1).long()
    dtype = compute_dtype(logits[0].dtype)
    out = []
    for z in logits:
        z2 = z.reshape(-1, V)
        if rows is not None:
            z2 = z2.index_select(0, rows)
        out.append(z2.to(dtype))
    if rows is not None:
        flat_labels = flat_labels.index_select(0, rows)
    if flat_labels.numel() and (int(flat_labels.min()) < 0 or int(flat_labels.max()) >= V):
        raise ValueError(f"{who}: labels must lie in [0, {V}) or be {IGNORE_INDEX}")
    return ScoredLogits(out, flat_labels, max(int(flat_labels.numel()), 1), dtype)


def select_rows_like(target: Tensor, labels: Tensor, dtype: torch.dtype) -> Tensor:
    """A second logit tensor (e.g. the teacher's) restricted to the same scored rows."""
    V = target.shape[-1]
    rows = _scored_rows(labels, V)
    t2 = target.reshape(-1, V)
    if rows is not None:
        t2 = t2.index_select(0, rows)
    return t2.to(dtype)


def unscore(rows: Tensor, labels: Tensor, like: Tensor) -> Tensor:
    """Scored rows ``(n, V)`` back into the shape and dtype of ``like`` (zeros at ignored positions)."""
    V = like.shape[-1]
    if rows.shape[0] != labels.numel():
        keep = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)
        rows = torch.zeros(labels.numel(), V, dtype=rows.dtype, device=rows.device).index_copy_(0, keep, rows)
    return rows.view(like.shape).to(like.dtype)


def full_precision(like: Tensor):
    """Autocast off for the block: the losses pick their own precision (float32 at least), and
    an enclosing bf16 autocast would otherwise run their matmul-based reductions in bf16."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _first_tensor(values) -> Tensor | None:
    for v in values:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], Tensor):
            return v[0]
    return None


def autocast_off(fn):
    """Decorator: run ``fn`` with autocast disabled on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        like = _first_tensor(list(args) + list(kwargs.values()))
        if like is None:
            return fn(*args, **kwargs)
        with full_precision(like):
            return fn(*args, **kwargs)

    return wrapper


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[t, v] · b[t, v] for every row t. ``vecdot`` (a fused multiply and row sum) runs about 1.6×
    faster on CPUs than the batched matrix-vector product ``bmm`` this once was, for rows of a
    vocabulary's length."""
    return torch.linalg.vecdot(a, b)


def omega_vector(omega: Tensor, num_peers: int, like: Tensor, who: str) -> Tensor:
    """ω as a vector of length M in the compute dtype and device (differentiable cast)."""
    omega = torch.as_tensor(omega)
    if omega.shape != (num_peers,):
        raise ValueError(f"{who}: omega must have shape ({num_peers},), one weight per peer; "
                         f"got {tuple(omega.shape)}")
    return omega.to(device=like.device, dtype=like.dtype)


class OmegaFree:
    """Mixin for losses that do not depend on ω (``ce``, ``kd``): the hypergradient's mixed term
    ∂/∂ω Σ_i ⟨∂L/∂z_i, ż_i⟩ is 0, so it needs neither logits nor a second derivative."""

    #: ``mixed_omega_grad`` needs no logits, so the hypergradient need not keep them
    mixed_from_logit_grads = True

    def mixed_omega_grad(self, logits: Optional[Sequence[Tensor]], labels: Tensor, omega: Tensor,
                         tangents: Sequence[Tensor], teacher_logits: Optional[Tensor] = None,
                         logit_grads: Optional[Sequence[Tensor]] = None) -> Tensor:
        omega = torch.as_tensor(omega)
        return torch.zeros(len(tangents), dtype=omega.dtype, device=omega.device)
