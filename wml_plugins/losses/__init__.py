"""Built-in loss plugins: ``wml`` (method.md §3), ``kd`` (§8, teacher-guided) and ``ce``.

Each is registered as a factory ``make(cfg: WMLConfig)`` returning a callable
``loss(logits, labels, omega, teacher_logits=None) -> LossResult``, with the reference points
``wml verify`` checks it against (``references.py``).
"""

from __future__ import annotations

from wml_framework import hookimpl
from wml_framework.api import ReferencePoint

from . import references as ref
from .ce import CELoss
from .kd import KDLoss
from .wml import WMLLoss

__all__ = ["make_wml_loss", "make_kd_loss", "make_ce_loss", "wml_register_losses"]


def make_wml_loss(cfg) -> WMLLoss:
    """Weighted mutual learning: (1−α)·CE + α·Σ_{j≠i} ω_j KL_T(peer j ‖ peer i), O(M) mixture form."""
    return WMLLoss.from_config(cfg)


def make_kd_loss(cfg) -> KDLoss:
    """Teacher-guided distillation (Baby Llama): α_kd·CE + (1−α_kd)·KL_T(teacher ‖ peer)."""
    return KDLoss.from_config(cfg)


def make_ce_loss(cfg) -> CELoss:
    """Plain cross-entropy per peer (independent training, no sharing)."""
    return CELoss.from_config(cfg)


@hookimpl
def wml_register_losses(register):
    register("wml", make_wml_loss, help="Weighted mutual learning: (1−α)·CE + α·Σ_{j≠i} ω_j KL_T(peer j ‖ peer i).",
             references=[ReferencePoint("= wml_reference.wml_losses (values, parts, gradients)", ref.wml)])
    register("kd", make_kd_loss, help="Teacher-guided distillation (Baby Llama): α_kd·CE + (1−α_kd)·KL_T(teacher ‖ peer).",
             references=[ReferencePoint("= wml_reference.kd_loss (values, parts, gradients)", ref.kd)])
    register("ce", make_ce_loss, help="Plain cross-entropy per peer (independent training).",
             references=[ReferencePoint("= wml_reference.cross_entropy (values, gradients)", ref.ce)])
