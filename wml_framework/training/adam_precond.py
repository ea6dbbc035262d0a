"""The diagonal preconditioner of the AdamW step a peer is about to take (for ``exact_adam``).

Why: AdamW does not move θ by ``lr · g``; in its current gradient g it moves by
``lr · (1−β1)/(1−β1^t) · g / (√v̂_t + ε)`` (the rest of the update, momentum and weight decay,
does not depend on g). The Adam-aware hypergradient (method.md §4) takes its virtual step with
that diagonal, read here from the optimizer's state without changing it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..api import AdamPreconditioner, trainable_parameters

__all__ = ["clip_factor", "peer_diagonal", "adam_preconditioner"]


def clip_factor(grads: Sequence[Tensor], max_norm: float) -> float:
    """What ``clip_grads_with_norm_`` will multiply the gradients by (1 when no clipping)."""
    if max_norm <= 0 or not grads:
        return 1.0
    norm = float(torch.nn.utils.get_total_norm(grads))
    return min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else 0.0


def peer_diagonal(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], max_norm: float) -> list[Optional[Tensor]]:
    """``c (1−β1)/(1−β1^t) / (√v̂_t + ε)`` for each of ``params`` (their ``.grad`` is this step's
    gradient, before clipping), None for a parameter without a gradient."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    grads = [p.grad for p in params if p.grad is not None]
    c = clip_factor(grads, max_norm)
    out: list[Optional[Tensor]] = []
    for p in params:
        if p.grad is None:
            out.append(None)
            continue
        group = group_of[id(p)]
        beta1, beta2 = group["betas"]
        state = optimizer.state.get(p, {})
        t = int(state["step"]) + 1 if "step" in state else 1
        g = p.grad.detach().to(torch.float64) * c
        v_prev = state["exp_avg_sq"].detach().to(torch.float64) if "exp_avg_sq" in state else torch.zeros_like(g)
        v_hat = (beta2 * v_prev + (1 - beta2) * g * g) / (1 - beta2 ** t)
        diag = c * (1 - beta1) / (1 - beta1 ** t) / (v_hat.sqrt() + group["eps"])
        # a non-finite gradient makes the trainer skip this peer's step: AdamW will not move it (D = 0)
        out.append(torch.nan_to_num(diag, nan=0.0, posinf=0.0, neginf=0.0).to(p.dtype))
    return out


def adam_preconditioner(optimizers: Sequence[torch.optim.Optimizer], peers: Sequence[torch.nn.Module],
                        max_norm: float) -> AdamPreconditioner:
    """One :func:`peer_diagonal` per peer, over its trainable parameters in ``parameters()`` order."""
    return AdamPreconditioner([peer_diagonal(opt, list(trainable_parameters(peer).values()), max_norm)
                               for opt, peer in zip(optimizers, peers)])
