"""What the built-in updaters promise to equal, checked by ``wml verify`` on linear peers.

Each function maps a :class:`~wml_framework.api.OuterProblem` to the values of
``wml_reference`` (the float64 NumPy oracle) that the updater's step must reproduce.
"""

from __future__ import annotations

import numpy as np

import wml_reference as R

__all__ = ["FD_STEP", "eta", "mirror_exact", "mirror_exact_adam", "mirror_exact_adam_finite_differences",
           "mirror_finite_differences", "mirror_first_order", "uniform", "fixed"]

FD_STEP = 1e-5


def _args(p):
    return (p.x_train, p.y_train, p.x_val, p.y_val, p.weights)


def eta(p) -> float:
    c = p.config
    return R.warmup_cosine(p.outer_step, c.omega_lr, c.omega_min_lr, c.omega_warmup_iters, c.omega_decay_iters)


def mirror_exact(p) -> dict:
    """The exact hypergradient (Theorem 1), η from the documented schedule, the mirror step."""
    c = p.config
    g = R.hypergradient(*_args(p), p.omega, c.loss_alpha, c.temperature, p.inner_lr)
    return {"grad": g, "eta": eta(p), "omega": R.mirror_step(p.omega, g, eta(p)), "info": {"hypergradient": "exact"}}


def mirror_exact_adam(p) -> dict:
    """The Adam-aware hypergradient: the virtual step preconditioned by the context's D."""
    c = p.config
    g = R.hypergradient(*_args(p), p.omega, c.loss_alpha, c.temperature, p.inner_lr, precond=p.preconditioner)
    return {"grad": g, "eta": eta(p), "omega": R.mirror_step(p.omega, g, eta(p)),
            "info": {"hypergradient": "exact_adam"}}


def mirror_exact_adam_finite_differences(p) -> dict:
    """Central differences of the preconditioned unrolled objective F(ω)."""
    c = p.config
    return {"grad": _central(lambda w: R.unrolled_objective(*_args(p), w, c.loss_alpha, c.temperature, p.inner_lr,
                                                             precond=p.preconditioner, check_simplex=False), p.omega)}


def _central(F, omega) -> np.ndarray:
    eye = np.eye(len(omega))
    return np.array([(F(omega + FD_STEP * e) - F(omega - FD_STEP * e)) / (2 * FD_STEP) for e in eye])


def mirror_finite_differences(p) -> dict:
    """The gradient of the unrolled objective F(ω) by central differences, coordinate by coordinate."""
    c = p.config

    return {"grad": _central(lambda w: R.unrolled_objective(*_args(p), w, c.loss_alpha, c.temperature, p.inner_lr,
                                                             check_simplex=False), p.omega)}


def mirror_first_order(p) -> dict:
    """L_2 at θ instead of θ' (named as such in ``info``)."""
    g = R.hypergradient_first_order(p.x_val, p.y_val, p.weights, p.omega)
    return {"grad": g, "eta": eta(p), "omega": R.mirror_step(p.omega, g, eta(p)),
            "info": {"hypergradient": "first_order"}}


def uniform(p) -> dict:
    return {"omega": np.full(len(p.omega), 1.0 / len(p.omega))}


def fixed(p) -> dict:
    w = np.asarray(p.config.fixed_omega, dtype=np.float64)
    return {"omega": w / w.sum()}
