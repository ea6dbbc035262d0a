"""Teacher-guided distillation (method.md §8, the Baby Llama baseline), one student loss per peer.

    L_i = α_kd · CE(z_i, y) + (1 − α_kd) · KL_T(sg(z̄) ‖ z_i)

z̄ are the (already averaged) teacher logits, the same for every peer; note α_kd weights the CE
term, the opposite convention of WML's α. The teacher's softmax and negative entropy are
computed once and shared by all peers. ω is accepted (the loss protocol passes it) and unused.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wml_framework.api import LossResult

from .common import (
    OmegaFree,
    autocast_off,
    omega_vector,
    scored_logits,
    select_rows_like,
)

__all__ = ["kd_peer_losses", "KDLoss"]


@autocast_off
def kd_peer_losses(logits: Sequence[Tensor], labels: Tensor, teacher_logits: Tensor,
                   alpha_kd: float, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(L_i per peer, CE_i, KL_T(sg(z̄) ‖ z_i)), token means over labels != -100."""
    who = "loss 'kd'"
    if teacher_logits is None:
        raise ValueError(f"{who}: needs teacher_logits (the teacher's averaged logits)")
    scored = scored_logits(logits, labels, who)
    if teacher_logits.shape != logits[0].shape:
        raise ValueError(f"{who}: teacher logits of shape {tuple(teacher_logits.shape)} do not match "
                         f"the peers' logits of shape {tuple(logits[0].shape)}")
    T, n = float(temperature), scored.n_scored
    with torch.no_grad():
        lq = F.log_softmax(select_rows_like(teacher_logits, labels, scored.dtype) / T, dim=-1)
        q = lq.exp()
        teacher_neg_ent = (q * lq).sum()                      # Σ_t Σ_v q log q
    per_peer, ce, kl = [], [], []
    for z in scored.logits:
        lp_T = F.log_softmax(z / T, dim=-1)
        kl_i = (T * T) * (teacher_neg_ent - (q * lp_T).sum()) / n
        ce_i = F.cross_entropy(z, scored.labels, reduction="sum") / n
        per_peer.append(alpha_kd * ce_i + (1.0 - alpha_kd) * kl_i)
        ce.append(ce_i.detach())
        kl.append(kl_i.detach())
    return torch.stack(per_peer), torch.stack(ce), torch.stack(kl)


class KDLoss(OmegaFree):
    """Baby Llama distillation from the teacher's logits: α_kd·CE + (1 − α_kd)·KL_T(teacher ‖ peer).

    ``LossResult.kl`` is the raw KL_T(sg(z̄) ‖ z_i) (T² included, before the (1 − α_kd) weight), so
    ``per_peer = α_kd·ce + (1 − α_kd)·kl``.
    """

    needs_teacher = True

    def __init__(self, alpha_kd: float = 0.5, temperature: float = 2.0):
        if not 0.0 <= alpha_kd <= 1.0:
            raise ValueError(f"loss 'kd': kd_alpha must lie in [0, 1], got {alpha_kd}")
        if not temperature > 0.0:
            raise ValueError(f"loss 'kd': kd_temperature must be > 0, got {temperature}")
        self.alpha_kd, self.temperature = float(alpha_kd), float(temperature)

    @classmethod
    def from_config(cls, cfg) -> "KDLoss":
        return cls(cfg.kd_alpha, cfg.kd_temperature)

    def __call__(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                 teacher_logits: Optional[Tensor] = None) -> LossResult:
        if len(logits):
            omega_vector(omega, len(logits), logits[0], "loss 'kd'")
        per_peer, ce, kl = kd_peer_losses(logits, labels, teacher_logits, self.alpha_kd, self.temperature)
        return LossResult(total=per_peer.sum(), per_peer=per_peer, ce=ce, kl=kl)

    def __repr__(self) -> str:
        return f"KDLoss(alpha_kd={self.alpha_kd}, temperature={self.temperature})"
