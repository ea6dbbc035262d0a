"""The ``mirror`` updater (method.md §4): exponentiated-gradient steps of ω along the hypergradient.

ω is kept in float64 throughout; η follows its own warm-up + cosine schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wml_framework.api import OuterContext, UpdateResult, uniform_omega
from wml_framework.training.schedules import warmup_cosine

from .hypergrad import DOUBLE_VJP, EXACT, EXACT_ADAM, FIRST_ORDER, hypergradient

__all__ = ["mirror_step", "check_peers", "MirrorUpdater", "make_mirror"]


def mirror_step(omega: Tensor, grad: Tensor, eta: float) -> Tensor:
    """Exponentiated gradient in log space: log ω ← log ω − η g − logsumexp(log ω − η g).

    A weight of exactly 0 stays 0 (log 0 = −inf is a fixed point); nothing overflows for large η·g.
    """
    logits = torch.log(omega.to(torch.float64)) - eta * grad.to(torch.float64)
    return torch.exp(logits - torch.logsumexp(logits, dim=0))


def check_peers(who: str, num_peers: int) -> int:
    if int(num_peers) < 1:
        raise ValueError(f"updater {who!r}: needs at least one peer, got num_peers={num_peers}")
    return int(num_peers)


class MirrorUpdater:
    """Mirror descent on the simplex along the hypergradient of the one-step-unrolled objective.

    η follows ``warmup_cosine(ctx.outer_step, omega_lr, omega_min_lr, omega_warmup_iters,
    omega_decay_iters)``. ``hypergradient="exact"`` is Theorem 1 (L_2 at θ' = θ − γ∇L_1);
    ``"exact_adam"`` takes AdamW's virtual step θ' = θ − γ D ⊙ ∇L_1 (D from ``ctx.preconditioner``);
    ``"first_order"`` evaluates L_2 at θ. ``UpdateResult.info["hypergradient"]`` names the variant.
    ``ctx.outer_step`` counts outer updates from 0 and drives the schedule (so resuming needs no state).
    """

    needs_validation = True

    def __init__(self, num_peers: int, *, omega_lr: float = 0.25, omega_min_lr: float = 0.0025,
                 omega_warmup_iters: int = 2, omega_decay_iters: int = 50, hypergradient: str = EXACT,
                 tangents: str = DOUBLE_VJP):
        self.num_peers = check_peers("mirror", num_peers)
        if hypergradient not in (EXACT, EXACT_ADAM, FIRST_ORDER):
            raise ValueError(f"updater 'mirror': hypergradient must be {EXACT!r}, {EXACT_ADAM!r} or "
                             f"{FIRST_ORDER!r}, got {hypergradient!r}")
        self.omega_lr, self.omega_min_lr = float(omega_lr), float(omega_min_lr)
        self.omega_warmup_iters, self.omega_decay_iters = int(omega_warmup_iters), int(omega_decay_iters)
        self.method = hypergradient
        self.tangents = tangents
        # the trainer's G, u, z and graph on ctx.train replace step 1 and the tangents (exact method only)
        self.uses_inner_gradients = hypergradient in (EXACT, EXACT_ADAM) and tangents == DOUBLE_VJP
        self.uses_preconditioner = hypergradient == EXACT_ADAM   # the trainer then fills ctx.preconditioner
        self.last_seconds: dict = {}   # time per phase of the last hypergradient (benchmarks read it)

    @classmethod
    def from_config(cls, cfg, num_peers: int) -> "MirrorUpdater":
        return cls(num_peers, omega_lr=cfg.omega_lr, omega_min_lr=cfg.omega_min_lr,
                   omega_warmup_iters=cfg.omega_warmup_iters, omega_decay_iters=cfg.omega_decay_iters,
                   hypergradient=cfg.hypergradient)

    def eta(self, outer_step: int) -> float:
        return warmup_cosine(outer_step, self.omega_lr, self.omega_min_lr, self.omega_warmup_iters,
                             self.omega_decay_iters)

    def initial_omega(self) -> Tensor:
        return uniform_omega(self.num_peers)

    def step(self, ctx: OuterContext) -> UpdateResult:
        omega = ctx.omega.detach().to(torch.float64)
        hg = hypergradient(ctx.peers, ctx.loss, omega, ctx.train, ctx.val, ctx.inner_lr,
                           forward=ctx.forward, teacher_logits=ctx.teacher_logits, method=self.method,
                           tangents=self.tangents, inner=ctx.inner, reduce_mean=ctx.reduce_mean,
                           preconditioner=ctx.preconditioner)
        eta = self.eta(ctx.outer_step)
        grad = hg.grad.detach().to(omega.device)
        new = mirror_step(omega, grad, eta)
        self.last_seconds = dict(hg.seconds)
        info = {"hypergradient": hg.method, "direct": hg.direct.tolist(), "second": hg.second.tolist()}
        return UpdateResult(omega=new, grad=grad, eta=eta, val_loss=hg.val_loss, info=info)

    def state_dict(self) -> dict:
        """Empty: η comes from ``ctx.outer_step`` and ω from the trainer, so nothing else to keep."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def make_mirror(cfg, num_peers: int) -> MirrorUpdater:
    """Mirror descent along the exact (Adam-aware or first-order, if configured) hypergradient; η warm-up + cosine."""
    return MirrorUpdater.from_config(cfg, num_peers)
