"""The outer objective of method.md §4: cross-entropy of the ω-weighted logit ensemble.

    z_ens(ω) = Σ_i ω_i z_i,      L_2 = CE(z_ens, y)     (token mean, labels of -100 ignored)

    ∂L_2/∂z_i = ω_i G,   ∂L_2/∂ω_i = ⟨G, z_i⟩,   G = (s_1(z_ens) − onehot(y)) / n

Shared by the updaters (hypergradient) and anyone who scores the ensemble. A fused autograd
Function (first-order only: the hypergradient never differentiates L_2 twice) keeps one (n, V)
buffer instead of a chain of M temporaries; the mixture is formed in float32 at least.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .common import autocast_off, full_precision, omega_vector, rowdot, scored_logits, unscore

__all__ = ["ensemble_loss", "ensemble_loss_parts"]


def _ensemble_ce(zs: Sequence[Tensor], w: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(L_2, G) on scored rows, with G = (s_1(z_ens) − onehot(y))/n built in the mixture's own buffer."""
    z_ens = zs[0] * w[0]
    for i in range(1, len(zs)):
        z_ens.addcmul_(zs[i], w[i])
    zmax = z_ens.amax(dim=-1, keepdim=True)
    target = z_ens.gather(-1, labels.unsqueeze(-1))
    p = z_ens.sub_(zmax).exp_()
    total = p.sum(dim=-1, keepdim=True)
    p.div_(total)
    loss = (zmax + torch.log(total) - target).sum() / n
    G = p.mul_(1.0 / n)
    G.scatter_add_(-1, labels.unsqueeze(-1), torch.full((labels.shape[0], 1), -1.0 / n, dtype=G.dtype, device=G.device))
    return loss, G


class _FusedEnsembleCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, labels: Tensor, n: int, *zs: Tensor):
        loss, G = _ensemble_ce(zs, w, labels, n)
        ctx.save_for_backward(w, G, *zs)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        w, G, *zs = ctx.saved_tensors
        with full_precision(G):
            G = G.mul_(g)                                   # in place: a second backward is refused
            grad_w = torch.stack([rowdot(G, z).sum() for z in zs]) if ctx.needs_input_grad[0] else None
            grads = [G * w[i] if ctx.needs_input_grad[3 + i] else None for i in range(len(zs))]
        return (grad_w, None, None, *grads)


@autocast_off
def ensemble_loss(logits: Sequence[Tensor], labels: Tensor, omega: Tensor) -> Tensor:
    """L_2 = CE(Σ_i ω_i z_i, y) over the scored tokens; differentiable (once) in ω and the logits."""
    scored = scored_logits(logits, labels, "ensemble loss")
    w = omega_vector(omega, len(scored.logits), scored.logits[0], "ensemble loss")
    return _FusedEnsembleCE.apply(w, scored.labels, scored.n_scored, *scored.logits)


@torch.no_grad()
@autocast_off
def ensemble_loss_parts(logits: Sequence[Tensor], labels: Tensor, omega: Tensor) -> tuple[float, Tensor, Tensor]:
    """(L_2, ∂L_2/∂ω, G) without autograd; G = ∂L_2/∂z_ens has the logits' shape and dtype.

    Why: ∂L_2/∂z_i = ω_i G, so a caller that back-propagates to each peer's parameters can pass
    the one tensor G to every peer and scale peer i's parameter gradient by ω_i afterwards,
    instead of materialising M products ω_i G of size (n, V).
    """
    scored = scored_logits([z.detach() for z in logits], labels, "ensemble loss")
    w = omega_vector(omega, len(scored.logits), scored.logits[0], "ensemble loss")
    loss, G = _ensemble_ce(scored.logits, w, scored.labels, scored.n_scored)
    grad_w = torch.stack([rowdot(G, z).sum() for z in scored.logits]).to(torch.as_tensor(omega).dtype)
    return float(loss), grad_w, unscore(G, labels, logits[0])
