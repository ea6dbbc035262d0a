"""The WML inner loss of method.md §3 in its O(M) mixture form.

    L_i = (1−α) CE(z_i, y) + α Σ_{j≠i} ω_j KL_T(sg(z_j) ‖ z_i)

With q_j = s_T(z_j) (a stop-gradient target), e_j = Σ_v q_j log q_j and q̄ = Σ_j ω_j q_j,

    Σ_{j≠i} ω_j KL_T(q_j ‖ z_i) = T² · mean_t [ Σ_j ω_j e_j − ⟨q̄, log s_T(z_i)⟩ ]

because the i-th share of the mixture contributes ω_i (e_i − ⟨q_i, log s_T(z_i)⟩) = 0 in value,
and nothing to the gradients either: its derivative in z_i is ω_i (s_T(z_i) − q_i)/T = 0 (q_i is
s_T(z_i) held constant), and in ω_i it is e_i − ⟨q_i, log q_i⟩ = 0. So the full mixture gives the
same values and gradients as the sum over j ≠ i. One mixture serves every peer, so work and memory
are O(M·n·V), never the M² pairwise KLs.

Two implementations of the same function, chosen automatically:

* a fused autograd Function (ω a constant): the inner step's path. Its backward is the closed form
  ∂L_i/∂z_i = [(1−α)(s_1(z_i) − onehot(y)) + αT (Σω · q_i − q̄)] / n, written with in-place ops
  because on CPU every fresh (n, V) buffer costs as much as a softmax. It is once-differentiable.
* a composed torch expression (ω requires grad): differentiable to any order, in ω and in the
  logits (∂L/∂ω, ∂/∂ω of ∂L_1/∂z); ``wml verify`` and the generic hypergradient route use it.

Two closed forms serve the exact hypergradient (``WMLLoss.logit_grads``: the gradient above
without the values; ``WMLLoss.mixed_omega_grad``: ∂/∂ω Σ_i ⟨∂L_1/∂z_i, ż_i⟩).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from wml_framework.api import LossResult

from .common import (
    autocast_off,
    full_precision,
    omega_vector,
    rowdot,
    scored_logits,
    unscore,
)

__all__ = ["wml_peer_losses", "wml_logit_grads", "wml_mixed_omega_grad",
           "wml_mixed_omega_grad_from_logit_grads", "WMLLoss"]


def _softmax_T(z: Tensor, T: float, out: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(q = s_T(z), logsumexp(z/T)) per row, computed in one buffer (``out`` if given), with exp and
    normalisation in place: on CPU each fresh (n, V) buffer costs about as much as the arithmetic."""
    zmax = z.amax(dim=-1, keepdim=True)
    q = torch.sub(z, zmax) if out is None else torch.sub(z, zmax, out=out)
    if T != 1.0:
        q.mul_(1.0 / T)
    q.exp_()
    total = q.sum(dim=-1, keepdim=True)
    q.div_(total)
    return q, (zmax / T + torch.log(total)).squeeze(-1)


def _mixture(zs: Sequence[Tensor], w: Tensor, T: float) -> tuple[list, list, Tensor]:
    """q_i = s_T(z_i) (one fresh buffer each), logsumexp(z_i/T), and q̄ = Σ_j ω_j q_j."""
    qs, lses, qbar = [], [], None
    for i, z in enumerate(zs):
        q, lse = _softmax_T(z, T)
        qs.append(q)
        lses.append(lse)
        if qbar is None:
            qbar = q * w[0]
        else:
            qbar.addcmul_(q, w[i])                              # q̄ += ω_i q_i, in place
    return qs, lses, qbar


def _logit_grads_in_place(qs: list, qbar: Tensor, ps: Sequence[Tensor], labels: Tensor, w: Tensor,
                          alpha: float, T: float, n: int, g_peer: Tensor) -> list[Tensor]:
    """g_i ∂L_i/∂z_i = g_i [(1−α)(s_1(z_i) − onehot(y)) + αT (Σω q_i − q̄)] / n, built in place: in
    q_i's buffer when T = 1 (then s_1 = s_T), else in p_i = s_1(z_i)'s buffer (``ps``, T ≠ 1 only)."""
    wsum = w.sum()
    grads = []
    for i, q in enumerate(qs):
        g = g_peer[i]
        c_ce = g * (1.0 - alpha) / n
        c_q = g * alpha * T * wsum / n
        if T == 1.0:
            grad = q.mul_(c_q + c_ce)
        else:
            grad = ps[i].mul_(c_ce)
            grad.addcmul_(q, c_q)
        grad.addcmul_(qbar, -g * alpha * T / n)
        grad.scatter_add_(-1, labels.unsqueeze(-1), (-c_ce).expand(labels.shape[0], 1))
        grads.append(grad)
    return grads


class _FusedWML(torch.autograd.Function):
    """Peer losses (M,), CE parts (M,), KL parts (M,) of scored-row logits, ω constant.

    Saves one (n, V) buffer per peer (its q_i) plus the mixture q̄; the backward turns q_i into
    the gradient in place, so a second backward through the same graph is refused by autograd's
    saved-tensor version check instead of silently using overwritten values.
    """

    @staticmethod
    def forward(ctx, omega: Tensor, labels: Tensor, alpha: float, T: float, n: int, *zs: Tensor):
        w = omega
        wsum = w.sum()
        qs, lse_T, qbar = _mixture(zs, w, T)
        neg_ent = [rowdot(q, z) / T - lse for q, z, lse in zip(qs, zs, lse_T)]   # e_i = ⟨q_i, log q_i⟩ per token
        mix_neg_ent = (torch.stack(neg_ent, 1) @ w).sum()      # Σ_t Σ_j ω_j e_j
        per_peer, ce, kl, ps = [], [], [], []
        for i, z in enumerate(zs):
            cross = (rowdot(qbar, z) / T - lse_T[i] * wsum).sum()   # Σ_t ⟨q̄, log s_T(z_i)⟩ (rows of q̄ sum to Σω)
            kl_i = (T * T) * (mix_neg_ent - cross) / n
            if T == 1.0:
                lse_1 = lse_T[i]
            else:                                               # s_1(z_i) is needed by the backward too
                p, lse_1 = _softmax_T(z, 1.0)
                ps.append(p)
            ce_i = (lse_1 - z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).sum() / n
            ce.append(ce_i)
            kl.append(kl_i)
            per_peer.append((1.0 - alpha) * ce_i + alpha * kl_i)
        ctx.alpha, ctx.T, ctx.n, ctx.M = alpha, T, n, len(zs)
        ctx.save_for_backward(w, labels, qbar, *qs, *ps)
        per_peer, ce, kl = torch.stack(per_peer), torch.stack(ce), torch.stack(kl)
        ctx.mark_non_differentiable(ce, kl)
        return per_peer, ce, kl

    @staticmethod
    @once_differentiable
    def backward(ctx, g_peer: Tensor, _g_ce: Tensor, _g_kl: Tensor):
        alpha, T, n, M = ctx.alpha, ctx.T, ctx.n, ctx.M
        saved = ctx.saved_tensors
        w, labels, qbar = saved[:3]
        qs, ps = saved[3:3 + M], saved[3 + M:]
        with full_precision(qbar):
            grads = _logit_grads_in_place(list(qs), qbar, ps, labels, w, alpha, T, n, g_peer)
        return (None, None, None, None, None, *grads)


def _composed(zs: Sequence[Tensor], labels: Tensor, w: Tensor, alpha: float, T: float, n: int):
    """The same peer losses as plain torch ops (any-order differentiable in ω and the logits)."""
    lp_T = torch.stack([F.log_softmax(z / T, dim=-1) for z in zs])     # (M, n, V), differentiable
    q = lp_T.detach().exp()                                            # stop-gradient targets
    neg_ent = (q * lp_T.detach()).sum(-1)                              # e_j per token, (M, n)
    qbar = torch.einsum("m,mnv->nv", w, q)
    cross = torch.einsum("nv,mnv->mn", qbar, lp_T)                     # ⟨q̄, log s_T(z_i)⟩
    own = (q * lp_T).sum(-1)                                           # ⟨q_i, log s_T(z_i)⟩: value e_i
    per_tok = (w @ neg_ent)[None, :] - w[:, None] * neg_ent - cross + w[:, None] * own
    kl = (T * T) * per_tok.sum(-1) / n
    lp_1 = lp_T if T == 1.0 else torch.stack([F.log_softmax(z, dim=-1) for z in zs])
    idx = labels.view(1, -1, 1).expand(len(zs), -1, 1)
    ce = -lp_1.gather(-1, idx).squeeze(-1).sum(-1) / n
    return (1.0 - alpha) * ce + alpha * kl, ce.detach(), kl.detach()


@autocast_off
def wml_peer_losses(logits: Sequence[Tensor], labels: Tensor, omega: Tensor, alpha: float,
                    temperature: float, *, fused: Optional[bool] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(L_i per peer, CE_i, Σ_{j≠i} ω_j KL_T(sg(z_j) ‖ z_i)) for (…, V) logits; -100 labels ignored.

    ``fused=None`` picks the fused path unless ω requires grad (then the composed one).
    """
    who = "loss 'wml'"
    scored = scored_logits(logits, labels, who)
    zs = scored.logits
    w = omega_vector(omega, len(zs), zs[0], who)
    if fused is None:
        fused = not (w.requires_grad and torch.is_grad_enabled())
    if fused:
        return _FusedWML.apply(w.detach(), scored.labels, float(alpha), float(temperature),
                               scored.n_scored, *zs)
    return _composed(zs, scored.labels, w, float(alpha), float(temperature), scored.n_scored)


@torch.no_grad()
@autocast_off
def wml_logit_grads(logits: Sequence[Tensor], labels: Tensor, omega: Tensor, alpha: float,
                    temperature: float) -> list[Tensor]:
    """[∂(Σ_k L_k)/∂z_i] (targets stop-gradient) without computing the loss values, each of the
    shape and dtype of ``logits[i]`` (zero at ignored positions): the hypergradient's step 1."""
    scored = scored_logits([z.detach() for z in logits], labels, "loss 'wml'")
    zs = scored.logits
    w = omega_vector(omega, len(zs), zs[0], "loss 'wml'").detach()
    T = float(temperature)
    qs, _, qbar = _mixture(zs, w, T)
    ps = [_softmax_T(z, 1.0)[0] for z in zs] if T != 1.0 else []
    grads = _logit_grads_in_place(qs, qbar, ps, scored.labels, w, float(alpha), T, scored.n_scored,
                                  torch.ones(len(zs), dtype=zs[0].dtype, device=zs[0].device))
    return [unscore(g, labels, z) for g, z in zip(grads, logits)]


@autocast_off
def wml_mixed_omega_grad(logits: Sequence[Tensor], labels: Tensor, tangents: Sequence[Tensor],
                         alpha: float, temperature: float) -> Tensor:
    """∂/∂ω_j Σ_i ⟨∂L_1/∂z_i, ż_i⟩ in closed form: αT/n · (Σ_i ⟨q_i, ż_i⟩ − ⟨q_j, Σ_i ż_i⟩).

    Why: ∂L_1/∂z_i = [(1−α)(s_1(z_i) − onehot) + αT(Σω q_i − q̄)]/n is linear in ω with
    ∂/∂ω_j = αT (q_i − q_j)/n (the j = i term vanishes), so the exact hypergradient's second term
    needs M softmaxes and 2M row products instead of a double backward through the loss.
    """
    who = "loss 'wml'"
    scored = scored_logits(logits, labels, who)
    dots = scored_logits(tangents, labels, who).logits
    T = float(temperature)
    total_dot = dots[0].clone()
    for d in dots[1:]:
        total_dot.add_(d)
    own, shared = [], []
    buffer = torch.empty_like(scored.logits[0])                 # one exp buffer for all peers
    with torch.no_grad():
        for z, d in zip(scored.logits, dots):
            e = torch.sub(z, z.amax(dim=-1, keepdim=True), out=buffer)
            if T != 1.0:
                e.mul_(1.0 / T)
            inv_total = 1.0 / e.exp_().sum(dim=-1)            # q = e / Σe, applied per row below
            own.append((rowdot(e, d) * inv_total).sum())
            shared.append((rowdot(e, total_dot) * inv_total).sum())
    own_sum = torch.stack(own).sum()
    return (alpha * T / scored.n_scored) * (own_sum - torch.stack(shared))


@autocast_off
def wml_mixed_omega_grad_from_logit_grads(logit_grads: Sequence[Tensor], labels: Tensor, omega: Tensor,
                                          tangents: Sequence[Tensor], alpha: float) -> Tensor:
    """The same quantity at T = 1 from u_i = ∂L_1/∂z_i instead of the logits (no softmax at all).

    Why: at T = 1, u_i = c q_i − (α/n) q̄ − ((1−α)/n) onehot(y) with c = ((1−α) + αΣω)/n the same
    for every peer, so in Σ_i ⟨q_i, ż_i⟩ − ⟨q_j, Σ_i ż_i⟩ the q̄ and onehot parts cancel:
    ∂/∂ω_j Σ_i ⟨u_i, ż_i⟩ = α/(n c) · (Σ_i ⟨u_i, ż_i⟩ − ⟨u_j, Σ_i ż_i⟩).
    """
    who = "loss 'wml'"
    grads = scored_logits(logit_grads, labels, who)
    dots = scored_logits(tangents, labels, who).logits
    w = omega_vector(omega, len(dots), dots[0], who)
    n = grads.n_scored
    c = ((1.0 - alpha) + alpha * w.sum()) / n
    with torch.no_grad():
        total_dot = dots[0].clone()
        for d in dots[1:]:
            total_dot.add_(d)
        own = torch.stack([rowdot(u, d).sum() for u, d in zip(grads.logits, dots)]).sum()
        shared = torch.stack([rowdot(u, total_dot).sum() for u in grads.logits])
    return alpha / (n * c) * (own - shared)


class WMLLoss:
    """Weighted mutual learning (method.md §3): CE plus the ω-weighted KL to the other peers.

    ``LossResult.kl`` is the distillation term before its α weight, Σ_{j≠i} ω_j KL_T(sg(z_j) ‖ z_i),
    so ``per_peer = (1 − α)·ce + α·kl``. With a constant ω the graph can be back-propagated once
    (a second pass raises autograd's in-place error); pass ω with ``requires_grad`` for more.
    """

    needs_teacher = False

    def __init__(self, alpha: float = 0.5, temperature: float = 1.0):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"loss 'wml': loss_alpha must lie in [0, 1], got {alpha}")
        if not temperature > 0.0:
            raise ValueError(f"loss 'wml': temperature must be > 0, got {temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)

    @classmethod
    def from_config(cls, cfg) -> "WMLLoss":
        return cls(cfg.loss_alpha, cfg.temperature)

    def __call__(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                 teacher_logits: Optional[Tensor] = None) -> LossResult:
        per_peer, ce, kl = wml_peer_losses(logits, labels, omega, self.alpha, self.temperature)
        return LossResult(total=per_peer.sum(), per_peer=per_peer, ce=ce, kl=kl)

    def logit_grads(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                    teacher_logits: Optional[Tensor] = None) -> list[Tensor]:
        """[∂total/∂z_i] without the loss values (hypergradient fast path, ω a constant)."""
        return wml_logit_grads(logits, labels, omega, self.alpha, self.temperature)

    @property
    def mixed_from_logit_grads(self) -> bool:
        """True when ``mixed_omega_grad`` needs only ``logit_grads`` (``logits`` may be None): at T = 1."""
        return self.temperature == 1.0

    def mixed_omega_grad(self, logits: Optional[Sequence[Tensor]], labels: Tensor, omega: Tensor,
                         tangents: Sequence[Tensor], teacher_logits: Optional[Tensor] = None,
                         logit_grads: Optional[Sequence[Tensor]] = None) -> Tensor:
        """∂/∂ω Σ_i ⟨∂L_1/∂z_i, ż_i⟩ (the hypergradient's second term at the logit level), shape (M,).

        ``logit_grads`` (∂L_1/∂z_i at the same point, if the caller has them) avoid every softmax at T = 1.
        """
        if logit_grads is not None and self.temperature == 1.0:
            out = wml_mixed_omega_grad_from_logit_grads(logit_grads, labels, omega, tangents, self.alpha)
        elif logits is None:
            raise ValueError("loss 'wml': mixed_omega_grad needs the logits unless T = 1 and logit_grads are given")
        else:
            out = wml_mixed_omega_grad(logits, labels, tangents, self.alpha, self.temperature)
        return out.to(dtype=torch.as_tensor(omega).dtype)

    def __repr__(self) -> str:
        return f"WMLLoss(alpha={self.alpha}, temperature={self.temperature})"
