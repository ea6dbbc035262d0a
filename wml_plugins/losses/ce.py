"""Plain cross-entropy per peer: independent training, the no-sharing baseline.

ω is accepted (the loss protocol passes it) and has no effect; ``kl`` is reported as zeros so
that logs have the same columns for every loss.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wml_framework.api import LossResult

from .common import OmegaFree, autocast_off, omega_vector, scored_logits

__all__ = ["ce_peer_losses", "CELoss"]


@autocast_off
def ce_peer_losses(logits: Sequence[Tensor], labels: Tensor) -> Tensor:
    """CE(z_i, y) per peer, token mean over labels != -100, softmax in float32 at least."""
    scored = scored_logits(logits, labels, "loss 'ce'")
    return torch.stack([F.cross_entropy(z, scored.labels, reduction="sum") / scored.n_scored
                        for z in scored.logits])


class CELoss(OmegaFree):
    """Cross-entropy of each peer on the labels, nothing shared (independent training)."""

    needs_teacher = False

    @classmethod
    def from_config(cls, cfg) -> "CELoss":
        return cls()

    def __call__(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                 teacher_logits: Optional[Tensor] = None) -> LossResult:
        if len(logits):
            omega_vector(omega, len(logits), logits[0], "loss 'ce'")
        per_peer = ce_peer_losses(logits, labels)
        return LossResult(total=per_peer.sum(), per_peer=per_peer, ce=per_peer.detach(),
                          kl=torch.zeros_like(per_peer.detach()))

    def __repr__(self) -> str:
        return "CELoss()"
