"""Exact hypergradient of method.md §4 (Theorem 1) for linear-softmax peers z_i = X_i @ W_i.

Why linear peers: every derivative is available in closed form in float64, so the unrolled
objective F(ω) = L_2(θ'(ω), ω) with θ' = θ − γ ∇_θ L_1(θ, ω) and its gradient can be checked
against finite differences to ~1e-8, which HF models cannot do (method.md §4, practical facts).

Derivation. ∇_{W_i} L_1 = X_iᵀ ∂L_i/∂z_i (targets are stop-gradient, so only L_i depends on W_i
as a student). L_1 is linear in ω: ∇_θ L_1 = A(θ) + Σ_j ω_j ∇_θ B_j(θ), hence
∂W'_i/∂ω_j = −γ ∇_{W_i} B_j(θ) with ∇_{W_i} B_j = X_iᵀ α T (s_T(z_i) − s_T(z_j))/n (i ≠ j, 0 for i = j).
By the chain rule, with G = (s_1(z_ens') − onehot(y_val))/n_val on the validation batch,
    ∇_{W'_i} L_2 = ω_i X_val,iᵀ G,      ∂L_2/∂ω_j |_{θ'} = ⟨G, X_val,j W'_j⟩,
    g_j = ∂L_2/∂ω_j(θ', ω) − γ Σ_i ⟨∇_{W'_i} L_2(θ', ω), ∇_{W_i} B_j(θ)⟩.

Adam-aware variant (``precond``, method.md §4 "Adam-aware virtual step"): AdamW moves a parameter
by γ · D ⊙ g in its current gradient g, with γ its learning rate and D = c(1−β1)/(1−β1^t)/(√v̂ + ε)
a diagonal held constant (c: the clipping factor). With ``precond = [D_1 … D_M]`` (positive, shapes of W) the virtual step is
θ' = θ − γ D ⊙ ∇_θ L_1 and, since D is symmetric, g_j = ∂L_2/∂ω_j(θ') − γ ⟨D ⊙ ∇_θ L_2(θ'), ∇_θ B_j⟩.
``precond=None`` is D = 1 (plain SGD, Theorem 1).

ω convention: F is defined for any finite vector ω, and ``hypergradient`` is its gradient as a
function of the unconstrained vector. Validation requires ω on the simplex by default; pass
``check_simplex=False`` to evaluate off the simplex (e.g. coordinate-wise finite differences).
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .losses import (
    ensemble_loss,
    ensemble_loss_grad_logits,
    ensemble_loss_grad_omega,
    wml_b_grads,
    wml_losses_grad,
)

__all__ = ["linear_logits", "linear_inner_grad", "linear_b_grads", "virtual_step", "unrolled_objective",
           "hypergradient", "hypergradient_first_order"]


def _train(X_train, y_train, W):
    Xs, Ws = _checks.linear_peers(X_train, W, "X_train")
    _checks.labels(y_train, (Xs[0].shape[0], Ws[0].shape[1]), "y_train")
    return Xs, Ws


def _val(X_val, y_val, W):
    Xs, Ws = _checks.linear_peers(X_val, W, "X_val")
    _checks.labels(y_val, (Xs[0].shape[0], Ws[0].shape[1]), "y_val")
    return Xs, Ws


def linear_logits(X, W) -> list[np.ndarray]:
    """[X_i @ W_i for each peer i]."""
    Xs, Ws = _checks.linear_peers(X, W)
    return [x @ w for x, w in zip(Xs, Ws)]


def linear_inner_grad(X_train, y_train, W, omega, alpha, T=1.0, *, check_simplex=True) -> list[np.ndarray]:
    """∇_{W_i} L_1(θ, ω) = X_iᵀ ∂L_i/∂z_i for each peer (targets stop-gradient), shapes of W."""
    Xs, Ws = _train(X_train, y_train, W)
    dz = wml_losses_grad([x @ w for x, w in zip(Xs, Ws)], y_train, omega, alpha, T, check_simplex=check_simplex)
    return [x.T @ g for x, g in zip(Xs, dz)]


def linear_b_grads(X_train, y_train, W, alpha, T=1.0) -> list[list[np.ndarray]]:
    """out[j][i] = ∇_{W_i} B_j(θ), B_j = α Σ_{i≠j} KL_T(sg(z_j) ‖ z_i) (zero when i = j)."""
    Xs, Ws = _train(X_train, y_train, W)
    dB = wml_b_grads([x @ w for x, w in zip(Xs, Ws)], y_train, alpha, T)
    M = len(Ws)
    return [[Xs[i].T @ dB[j, i] for i in range(M)] for j in range(M)]


def _precond(precond, Ws) -> list[np.ndarray]:
    """D_i for every peer: ones (plain SGD) when ``precond`` is None, else positive arrays shaped like W_i."""
    if precond is None:
        return [np.ones_like(w) for w in Ws]
    if isinstance(precond, np.ndarray) or not isinstance(precond, (list, tuple)) or len(precond) != len(Ws):
        raise ValueError(f"precond must be a list with one array per peer ({len(Ws)}), shaped like W")
    out = []
    for i, (d, w) in enumerate(zip(precond, Ws)):
        d = _checks.float_array(d, f"precond[{i}]")
        if d.shape != w.shape:
            raise ValueError(f"precond[{i}] has shape {d.shape}, W[{i}] has {w.shape}: they must match")
        if np.any(d <= 0):
            raise ValueError(f"precond[{i}] must be positive (a diagonal preconditioner), min is {float(d.min())!r}")
        out.append(d)
    return out


def virtual_step(X_train, y_train, W, omega, alpha, T, gamma, *, precond=None, check_simplex=True) -> list[np.ndarray]:
    """θ' = θ − γ D ⊙ ∇_θ L_1(θ, ω): one virtual step of the inner problem (SGD when ``precond`` is None)."""
    gamma = _checks.nonnegative(gamma, "inner learning rate gamma")
    Ws = _train(X_train, y_train, W)[1]
    D = _precond(precond, Ws)
    grads = linear_inner_grad(X_train, y_train, W, omega, alpha, T, check_simplex=check_simplex)
    return [w - gamma * d * g for w, d, g in zip(Ws, D, grads)]


def unrolled_objective(X_train, y_train, X_val, y_val, W, omega, alpha, T, gamma, *, precond=None,
                       check_simplex=True) -> float:
    """F(ω) = L_2(θ'(ω), ω) = CE(Σ_i ω_i X_val,i @ W'_i, y_val)."""
    _val(X_val, y_val, W)
    W1 = virtual_step(X_train, y_train, W, omega, alpha, T, gamma, precond=precond, check_simplex=check_simplex)
    return ensemble_loss(linear_logits(X_val, W1), y_val, omega, check_simplex=check_simplex)


def hypergradient(X_train, y_train, X_val, y_val, W, omega, alpha, T, gamma, *, precond=None,
                  check_simplex=True) -> np.ndarray:
    """Exact ∇_ω F(ω), shape (M,): g_j = ∂L_2/∂ω_j(θ', ω) − γ ⟨D ⊙ ∇_θ L_2(θ', ω), ∇_θ B_j(θ)⟩
    (Theorem 1 when ``precond`` is None, i.e. D = 1)."""
    Xv, Ws = _val(X_val, y_val, W)
    gamma = _checks.nonnegative(gamma, "inner learning rate gamma")
    D = _precond(precond, Ws)
    W1 = virtual_step(X_train, y_train, W, omega, alpha, T, gamma, precond=D, check_simplex=check_simplex)
    w = _checks.omega(omega, len(W1), simplex=check_simplex)
    zv = [x @ wi for x, wi in zip(Xv, W1)]
    direct = ensemble_loss_grad_omega(zv, y_val, w, check_simplex=check_simplex)
    # ∇_{W'_i} L_2 = X_val,iᵀ ∂L_2/∂z_i = ω_i X_val,iᵀ G, G = ∂CE/∂z_ens (ω enters here too)
    gL2 = [d * (x.T @ g) for x, d, g in zip(Xv, D, ensemble_loss_grad_logits(zv, y_val, w, check_simplex=check_simplex))]
    dB = linear_b_grads(X_train, y_train, W, alpha, T)
    second = np.array([sum(float(np.sum(gL2[i] * dB[j][i])) for i in range(len(W1))) for j in range(len(W1))])
    return direct - gamma * second


def hypergradient_first_order(X_val, y_val, W, omega, *, check_simplex=True) -> np.ndarray:
    """First-order variant: ∂L_2/∂ω at θ (not θ'), the γ → 0 limit of ``hypergradient``."""
    _val(X_val, y_val, W)
    return ensemble_loss_grad_omega(linear_logits(X_val, W), y_val, omega, check_simplex=check_simplex)
