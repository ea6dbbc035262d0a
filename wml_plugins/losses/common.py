"""Shared plumbing of the loss plugins: scored-token selection, compute precision, row dots.

Every loss must agree on what "a mean over scored tokens" means (labels of -100 are neither
scored nor counted), on the precision of its softmaxes (float32 at least, so bf16 logits of ±1e4
stay finite) and on the shapes it accepts ((B, T, V) or (n, V) logits). Those rules are the
contract's, so their helpers live in ``wml_framework.api`` (the outer objective uses them too);
this module gathers them for the built-in losses and adds what only losses need.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from wml_framework.api import (
    IGNORE_INDEX,
    ScoredLogits,
    autocast_off,
    full_precision,
    omega_vector,
    rowdot,
    scored_logits,
    unscore,
)

__all__ = ["ScoredLogits", "scored_logits", "select_rows_like", "unscore", "full_precision", "autocast_off",
           "rowdot", "omega_vector", "OmegaFree"]


def select_rows_like(target: Tensor, labels: Tensor, dtype: torch.dtype) -> Tensor:
    """A second logit tensor (e.g. the teacher's) restricted to the same scored rows as
    :func:`~wml_framework.api.scored_logits` keeps."""
    t2 = target.reshape(-1, target.shape[-1])
    mask = labels.reshape(-1) != IGNORE_INDEX
    if not bool(mask.all()):
        t2 = t2.index_select(0, mask.nonzero().squeeze(-1))
    return t2.to(dtype)


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
