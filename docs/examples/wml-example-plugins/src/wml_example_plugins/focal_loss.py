"""``focal_wml``: the WML loss of wml's method.md §3 with a focal cross-entropy (Lin et al., 2017).

    L_i = (1−α) · mean_t [−(1 − p_t)^γ log p_t] + α · Σ_{j≠i} ω_j KL_T(sg(z_j) ‖ z_i)

γ = 0 gives back the WML loss exactly, which the first reference point tells ``wml verify`` to check
against ``wml_reference``; the second pins the focal term itself at γ = 2 with a NumPy formula.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wml_framework import hookimpl
from wml_framework.api import LossResult, Option, ReferencePoint

KL_SIGN = 1.0  # the distillation term is added (its tests flip this to show verify catches it)


class FocalWML:
    """Written with plain torch operations, so it is differentiable in the logits and in ω to any
    order (the exact hypergradient of ``mirror`` needs ∂/∂ω of ∂L/∂z)."""

    needs_teacher = False

    def __init__(self, alpha: float, temperature: float, gamma: float):
        self.alpha, self.temperature, self.gamma = alpha, temperature, gamma

    def __call__(self, logits, labels, omega, teacher_logits=None) -> LossResult:
        V = logits[0].shape[-1]
        y = labels.reshape(-1)
        keep = y != -100                                       # ignored positions: not scored, not counted
        y, n = y[keep], max(int(keep.sum()), 1)
        dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32   # never bf16 softmaxes
        zs = [z.reshape(-1, V)[keep].to(dtype) for z in logits]
        w, T = omega.to(dtype), self.temperature
        targets = [F.log_softmax(z.detach() / T, -1) for z in zs]   # the other peers: fixed targets
        per_peer, ce, kl = [], [], []
        for i, z in enumerate(zs):
            log_p = F.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
            focal = -(torch.pow(1.0 - log_p.exp(), self.gamma) * log_p).sum() / n
            log_s = F.log_softmax(z / T, -1)
            kl_i = torch.zeros((), dtype=dtype, device=z.device)
            for j, log_q in enumerate(targets):
                if j != i:
                    kl_i = kl_i + w[j] * (log_q.exp() * (log_q - log_s)).sum() * (T * T) / n
            per_peer.append((1 - self.alpha) * focal + KL_SIGN * self.alpha * kl_i)
            ce.append(focal.detach())
            kl.append(kl_i.detach())
        per_peer = torch.stack(per_peer)
        return LossResult(total=per_peer.sum(), per_peer=per_peer, ce=torch.stack(ce), kl=torch.stack(kl))


def make_focal_wml(cfg, *, gamma: float) -> FocalWML:
    """WML with a focal cross-entropy: (1−α)·FL_γ + α·Σ_{j≠i} ω_j KL_T(peer j ‖ peer i)."""
    return FocalWML(cfg.loss_alpha, cfg.temperature, gamma)


def equals_wml(problem) -> dict:
    """At γ = 0 the loss is wml_reference's WML loss: values, every part it reports, and gradients.
    The temperature and α are the problem's (verify tries three of each), never pinned here."""
    import wml_reference as R

    c, zs, y, w = problem.config, problem.logits, problem.labels, problem.omega
    kl = np.array([[R.kl_div(zs[j], zs[i], y, c.temperature) if i != j else 0.0 for j in range(len(zs))]
                   for i in range(len(zs))])
    return {"per_peer": R.wml_losses(zs, y, w, c.loss_alpha, c.temperature),
            "ce": [R.cross_entropy(z, y) for z in zs], "kl": kl @ w,
            "grad_logits": R.wml_losses_grad(zs, y, w, c.loss_alpha, c.temperature),
            "grad_omega": c.loss_alpha * kl.sum(axis=0)}


def focal_term(problem) -> dict:
    """At γ = 2 the CE part is −mean_t (1 − p_t)² log p_t, written out in NumPy."""
    y = problem.labels.reshape(-1)
    keep = y != -100
    out = []
    for z in problem.logits:
        z2 = z.reshape(-1, z.shape[-1])[keep]
        log_p = z2 - z2.max(-1, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
        lp = log_p[np.arange(len(z2)), y[keep]]
        out.append(float(-((1 - np.exp(lp)) ** 2 * lp).sum() / max(keep.sum(), 1)))
    return {"ce": out}


@hookimpl
def wml_register_losses(register):
    register("focal_wml", make_focal_wml,
             options=[Option("gamma", 2.0, "Focusing exponent γ of the focal cross-entropy (0: plain CE).",
                             low=0.0, high=10.0)],
             references=[ReferencePoint("gamma = 0 equals wml_reference.wml_losses", equals_wml, {"gamma": 0.0}),
                         ReferencePoint("gamma = 2: focal CE term", focal_term, {"gamma": 2.0})])
