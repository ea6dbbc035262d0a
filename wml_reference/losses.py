"""Losses of method.md §2, §3, §4 and §8 and their gradients with respect to the logits.

Why this exists: it is the float64 oracle that torch implementations are compared against, so it
favours plain formulas over speed (pairwise KLs instead of the §3 mixture trick). Conventions:
every loss is a mean over the n scored tokens (label != -100), KL carries the T² factor, and the
distillation target is a stop-gradient (gradients are taken w.r.t. the student logits only).
Logits may be (n, V) or (..., V) with labels of shape (...); leading dims are flattened.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from . import _checks

__all__ = ["cross_entropy", "cross_entropy_grad", "kl_div", "kl_div_grad", "wml_losses", "wml_losses_grad",
           "wml_b_grads", "ensemble_loss", "ensemble_loss_grad_omega", "ensemble_loss_grad_logits",
           "kd_loss", "kd_loss_grad"]


# ---------------------------------------------------------------- internal (validated inputs)

def _flat(z: np.ndarray) -> np.ndarray:
    return z.reshape(-1, z.shape[-1])


def _log_softmax_T(z2: np.ndarray, T: float, name: str) -> np.ndarray:
    """log s_T(z) row-wise, stable; refuses z/T overflowing (tiny T with huge logits)."""
    with np.errstate(over="ignore"):
        zt = z2 / T
    if not np.all(np.isfinite(zt)):
        raise ValueError(f"{name} / T overflows float64 (T = {T} is too small for these logits)")
    return log_softmax(zt, axis=-1)


def _ce(z2, y, mask, n) -> float:
    logp = _log_softmax_T(z2, 1.0, "logits")
    return float(-np.sum(logp[np.arange(len(y)), y][mask]) / n)


def _ce_grad(z2, y, mask, n) -> np.ndarray:
    g = np.exp(_log_softmax_T(z2, 1.0, "logits"))
    g[np.arange(len(y)), y] -= 1.0
    g[~mask] = 0.0
    return g / n


def _kl(q2, z2, mask, n, T) -> float:
    logq = _log_softmax_T(q2, T, "target logits")
    logz = _log_softmax_T(z2, T, "logits")
    per_tok = np.sum(np.exp(logq) * (logq - logz), axis=-1)
    return float(T * T * np.sum(per_tok[mask]) / n)


def _kl_grad(q2, z2, mask, n, T) -> np.ndarray:
    g = T * (np.exp(_log_softmax_T(z2, T, "logits")) - np.exp(_log_softmax_T(q2, T, "target logits")))
    g[~mask] = 0.0
    return g / n


def _prep(z, y, name="logits"):
    z = _checks.logits(z, name)
    y, mask, n = _checks.labels(y, z.shape)
    return z, y, mask, n


def _prep_peers(logits, y, omega, check_simplex):
    zs = _checks.peers(logits)
    y, mask, n = _checks.labels(y, zs[0].shape)
    w = _checks.omega(omega, len(zs), simplex=check_simplex)
    return zs, y, mask, n, w


# ---------------------------------------------------------------- §2 building blocks

def cross_entropy(z, y) -> float:
    """CE(z, y) = (1/n) Σ_t −log s_1(z_t)[y_t] over scored tokens (§2)."""
    z, y, mask, n = _prep(z, y)
    return _ce(_flat(z), y, mask, n)


def cross_entropy_grad(z, y) -> np.ndarray:
    """∂CE/∂z = (s_1(z) − onehot(y)) / n, zero rows at ignored positions; same shape as z."""
    z, y, mask, n = _prep(z, y)
    return _ce_grad(_flat(z), y, mask, n).reshape(z.shape)


def kl_div(q, z, y, T=1.0) -> float:
    """KL_T(q ‖ z) = T² (1/n) Σ_t Σ_v s_T(q_t)_v (log s_T(q_t)_v − log s_T(z_t)_v); q = target logits.

    ``y`` only selects the scored positions (label != -100).
    """
    T = _checks.temperature(T)
    z, y, mask, n = _prep(z, y)
    q = _checks.logits(q, "target logits q")
    _checks.same_shape(q, z, "target logits q", "logits z")
    return _kl(_flat(q), _flat(z), mask, n, T)


def kl_div_grad(q, z, y, T=1.0) -> np.ndarray:
    """∂KL_T(q ‖ z)/∂z = T (s_T(z) − s_T(q)) / n (q held constant); same shape as z."""
    T = _checks.temperature(T)
    z, y, mask, n = _prep(z, y)
    q = _checks.logits(q, "target logits q")
    _checks.same_shape(q, z, "target logits q", "logits z")
    return _kl_grad(_flat(q), _flat(z), mask, n, T).reshape(z.shape)


# ---------------------------------------------------------------- §3 inner problem

def wml_losses(logits, y, omega, alpha, T=1.0, *, check_simplex=True) -> np.ndarray:
    """Peer losses L_i = (1−α) CE(z_i, y) + α Σ_{j≠i} ω_j KL_T(sg(z_j) ‖ z_i), shape (M,) (§3).

    ``logits``: list (or array) of M arrays of one shape (n, V). L_1 of §3 is ``wml_losses(...).sum()``.
    """
    alpha = _checks.unit_interval(alpha, "alpha")
    T = _checks.temperature(T)
    zs, y, mask, n, w = _prep_peers(logits, y, omega, check_simplex)
    z2 = [_flat(z) for z in zs]
    out = np.empty(len(zs))
    for i, zi in enumerate(z2):
        kl = sum((w[j] * _kl(zj, zi, mask, n, T) for j, zj in enumerate(z2) if j != i), 0.0)
        out[i] = (1.0 - alpha) * _ce(zi, y, mask, n) + alpha * kl
    return out


def wml_losses_grad(logits, y, omega, alpha, T=1.0, *, check_simplex=True) -> list[np.ndarray]:
    """[∂L_i/∂z_i for each peer i], targets z_j (j ≠ i) held constant (stop-gradient).

    = (1−α)(s_1(z_i) − onehot(y))/n + α Σ_{j≠i} ω_j T (s_T(z_i) − s_T(z_j))/n.
    Because of the stop-gradient this is also ∂L_1/∂z_i, so ∇_{W_i} L_1 = X_iᵀ (this) for linear peers.
    """
    alpha = _checks.unit_interval(alpha, "alpha")
    T = _checks.temperature(T)
    zs, y, mask, n, w = _prep_peers(logits, y, omega, check_simplex)
    z2 = [_flat(z) for z in zs]
    grads = []
    for i, zi in enumerate(z2):
        g = (1.0 - alpha) * _ce_grad(zi, y, mask, n)
        for j, zj in enumerate(z2):
            if j != i:
                g = g + alpha * w[j] * _kl_grad(zj, zi, mask, n, T)
        grads.append(g.reshape(zs[i].shape))
    return grads


def wml_b_grads(logits, y, alpha, T=1.0) -> np.ndarray:
    """∂B_j/∂z_i for B_j = α Σ_{i≠j} KL_T(sg(z_j) ‖ z_i) (§4), as an array of shape (M, M, *z.shape).

    Entry [j, i] is α T (s_T(z_i) − s_T(z_j))/n for i ≠ j and 0 for i = j. These are the pieces of
    the hypergradient's second term: ∇L_1 = A + Σ_j ω_j ∇B_j.
    """
    alpha = _checks.unit_interval(alpha, "alpha")
    T = _checks.temperature(T)
    zs = _checks.peers(logits)
    _, mask, n = _checks.labels(y, zs[0].shape)
    z2 = [_flat(z) for z in zs]
    M = len(zs)
    out = np.zeros((M, M) + zs[0].shape)
    for j in range(M):
        for i in range(M):
            if i != j:
                out[j, i] = (alpha * _kl_grad(z2[j], z2[i], mask, n, T)).reshape(zs[0].shape)
    return out


# ---------------------------------------------------------------- §4 outer problem

def _ensemble(zs, w) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        z = sum(wi * zi for wi, zi in zip(w, zs))
    if not np.all(np.isfinite(z)):
        raise ValueError("ensemble logits Σ ω_i z_i overflow float64")
    return z


def ensemble_loss(logits, y, omega, *, check_simplex=True) -> float:
    """L_2 = CE(Σ_i ω_i z_i, y): cross-entropy of the logit ensemble (§4)."""
    zs, y, mask, n, w = _prep_peers(logits, y, omega, check_simplex)
    return _ce(_flat(_ensemble(zs, w)), y, mask, n)


def ensemble_loss_grad_omega(logits, y, omega, *, check_simplex=True) -> np.ndarray:
    """∂L_2/∂ω_j = (1/n) Σ_t ⟨s_1(z_ens,t) − onehot(y_t), z_j,t⟩, shape (M,) (§4).

    At the current θ this is also the first-order hypergradient (the γ → 0 limit).
    """
    zs, y, mask, n, w = _prep_peers(logits, y, omega, check_simplex)
    G = _ce_grad(_flat(_ensemble(zs, w)), y, mask, n)
    return np.array([float(np.sum(G * _flat(z))) for z in zs])


def ensemble_loss_grad_logits(logits, y, omega, *, check_simplex=True) -> list[np.ndarray]:
    """[∂L_2/∂z_i] = ω_i (s_1(z_ens) − onehot(y))/n for each peer i."""
    zs, y, mask, n, w = _prep_peers(logits, y, omega, check_simplex)
    G = _ce_grad(_flat(_ensemble(zs, w)), y, mask, n).reshape(zs[0].shape)
    return [wi * G for wi in w]


# ---------------------------------------------------------------- §8 teacher-guided baseline

def kd_loss(z_student, z_teacher, y, alpha_kd=0.5, T=2.0) -> float:
    """Baby Llama distillation: α_kd CE(z_s, y) + (1 − α_kd) KL_T(sg(z̄) ‖ z_s) (§8).

    Note α_kd weights the CE term (the opposite of WML's α). ``z_teacher`` is the (already
    averaged) teacher logits z̄, same shape as ``z_student``.
    """
    a = _checks.unit_interval(alpha_kd, "alpha_kd")
    T = _checks.temperature(T)
    z, y, mask, n = _prep(z_student, y, "student logits")
    q = _checks.logits(z_teacher, "teacher logits")
    _checks.same_shape(q, z, "teacher logits", "student logits")
    return a * _ce(_flat(z), y, mask, n) + (1.0 - a) * _kl(_flat(q), _flat(z), mask, n, T)


def kd_loss_grad(z_student, z_teacher, y, alpha_kd=0.5, T=2.0) -> np.ndarray:
    """∂kd_loss/∂z_student (teacher is a constant); same shape as z_student."""
    a = _checks.unit_interval(alpha_kd, "alpha_kd")
    T = _checks.temperature(T)
    z, y, mask, n = _prep(z_student, y, "student logits")
    q = _checks.logits(z_teacher, "teacher logits")
    _checks.same_shape(q, z, "teacher logits", "student logits")
    g = a * _ce_grad(_flat(z), y, mask, n) + (1.0 - a) * _kl_grad(_flat(q), _flat(z), mask, n, T)
    return g.reshape(z.shape)
