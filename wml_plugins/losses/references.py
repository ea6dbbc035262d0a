"""What the built-in losses promise to equal, checked by ``wml verify``: the float64 NumPy oracle
``wml_reference``, value by value and gradient by gradient, at every temperature verify tries."""

from __future__ import annotations

import numpy as np

import wml_reference as R

__all__ = ["wml", "kd", "ce"]


def _pairwise(p, T):
    zs, y = p.logits, p.labels
    M = len(zs)
    return [[R.kl_div(zs[j], zs[i], y, T) if i != j else 0.0 for j in range(M)] for i in range(M)]


def wml(p) -> dict:
    """L_i = (1−α)CE + α Σ_{j≠i} ω_j KL_T(sg(z_j) ‖ z_i), its parts, ∂/∂z and ∂/∂ω (method.md §3)."""
    c, zs, y, w = p.config, p.logits, p.labels, p.omega
    a, T = c.loss_alpha, c.temperature
    kl = np.asarray(_pairwise(p, T))                 # kl[i, j] = KL_T(z_j ‖ z_i)
    return {"per_peer": R.wml_losses(zs, y, w, a, T), "ce": [R.cross_entropy(z, y) for z in zs],
            "kl": kl @ w, "grad_logits": R.wml_losses_grad(zs, y, w, a, T), "grad_omega": a * kl.sum(axis=0)}


def kd(p) -> dict:
    """α_kd·CE + (1−α_kd)·KL_T(teacher ‖ peer) (method.md §8), its parts and ∂/∂z; ω unused."""
    c, zs, y, q = p.config, p.logits, p.labels, p.teacher
    a, T = c.kd_alpha, c.kd_temperature
    return {"per_peer": [R.kd_loss(z, q, y, a, T) for z in zs], "ce": [R.cross_entropy(z, y) for z in zs],
            "kl": [R.kl_div(q, z, y, T) for z in zs], "grad_logits": [R.kd_loss_grad(z, q, y, a, T) for z in zs],
            "grad_omega": np.zeros(len(zs))}


def ce(p) -> dict:
    """CE per peer; KL reported as zeros; ω unused."""
    zs, y = p.logits, p.labels
    return {"per_peer": [R.cross_entropy(z, y) for z in zs], "ce": [R.cross_entropy(z, y) for z in zs],
            "kl": np.zeros(len(zs)), "grad_logits": [R.cross_entropy_grad(z, y) for z in zs],
            "grad_omega": np.zeros(len(zs))}
