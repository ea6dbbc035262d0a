"""wml_reference: a float64 NumPy/SciPy oracle for the losses and gradients of method.md.

Why it exists: torch implementations (plugins, the trainer) are verified against these plain
formulas. Conventions: token means over scored positions (label != -100), KL_T carries T²,
distillation targets are stop-gradient, every bad input raises ValueError. See docs/reference.md.
"""

from ._checks import IGNORE_INDEX, SIMPLEX_TOL
from .divergence import js_divergence, mean_pairwise_js
from .hypergradient import (
    hypergradient,
    hypergradient_first_order,
    linear_b_grads,
    linear_inner_grad,
    linear_logits,
    unrolled_objective,
    virtual_step,
)
from .losses import (
    cross_entropy,
    cross_entropy_grad,
    ensemble_loss,
    ensemble_loss_grad_logits,
    ensemble_loss_grad_omega,
    kd_loss,
    kd_loss_grad,
    kl_div,
    kl_div_grad,
    wml_b_grads,
    wml_losses,
    wml_losses_grad,
)
from .mirror import mirror_step
from .schedule import warmup_cosine

__all__ = [
    "IGNORE_INDEX",
    "SIMPLEX_TOL",
    "cross_entropy",
    "cross_entropy_grad",
    "kl_div",
    "kl_div_grad",
    "wml_losses",
    "wml_losses_grad",
    "wml_b_grads",
    "ensemble_loss",
    "ensemble_loss_grad_omega",
    "ensemble_loss_grad_logits",
    "kd_loss",
    "kd_loss_grad",
    "mirror_step",
    "warmup_cosine",
    "linear_logits",
    "linear_inner_grad",
    "linear_b_grads",
    "virtual_step",
    "unrolled_objective",
    "hypergradient",
    "hypergradient_first_order",
    "js_divergence",
    "mean_pairwise_js",
]
