"""Built-in peer-weight updaters: ``mirror`` (method.md §4), ``uniform`` (Deep Mutual Learning), ``fixed``.

Each is registered as a factory ``make(cfg: WMLConfig, num_peers)``; the object it returns moves ω
on the simplex with ``step(ctx: OuterContext) -> UpdateResult``. ω is kept in float64 throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wml_framework import hookimpl
from wml_framework.api import OuterContext, UpdateResult, uniform_omega

from .hypergrad import DOUBLE_VJP, EXACT, FIRST_ORDER, hypergradient
from wml_framework.schedules import warmup_cosine


def mirror_step(omega: Tensor, grad: Tensor, eta: float) -> Tensor:
    """Exponentiated gradient in log space: log ω ← log ω − η g − logsumexp(log ω − η g).

    A weight of exactly 0 stays 0 (log 0 = −inf is a fixed point); nothing overflows for large η·g.
    """
    logits = torch.log(omega.to(torch.float64)) - eta * grad.to(torch.float64)
    return torch.exp(logits - torch.logsumexp(logits, dim=0))


def _check_peers(who: str, num_peers: int) -> int:
    if int(num_peers) < 1:
        raise ValueError(f"updater {who!r}: needs at least one peer, got num_peers={num_peers}")
    return int(num_peers)


class MirrorUpdater:
    """Mirror descent on the simplex along the hypergradient of the one-step-unrolled objective.

    η follows ``warmup_cosine(ctx.outer_step, omega_lr, omega_min_lr, omega_warmup_iters,
    omega_decay_iters)``. ``hypergradient="exact"`` is Theorem 1 (L_2 at θ' = θ − γ∇L_1);
    ``"first_order"`` evaluates L_2 at θ and says so in ``UpdateResult.info["hypergradient"]``.
    ``ctx.outer_step`` counts outer updates from 0 and drives the schedule (so resuming needs no state).
    """

    needs_validation = True

    def __init__(self, num_peers: int, *, omega_lr: float = 0.25, omega_min_lr: float = 0.0025,
                 omega_warmup_iters: int = 2, omega_decay_iters: int = 50, hypergradient: str = EXACT,
                 tangents: str = DOUBLE_VJP):
        self.num_peers = _check_peers("mirror", num_peers)
        if hypergradient not in (EXACT, FIRST_ORDER):
            raise ValueError(f"updater 'mirror': hypergradient must be {EXACT!r} or {FIRST_ORDER!r}, "
                             f"got {hypergradient!r}")
        self.omega_lr, self.omega_min_lr = float(omega_lr), float(omega_min_lr)
        self.omega_warmup_iters, self.omega_decay_iters = int(omega_warmup_iters), int(omega_decay_iters)
        self.method = hypergradient
        self.tangents = tangents
        self.steps_taken = 0

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
                           tangents=self.tangents)
        eta = self.eta(ctx.outer_step)
        grad = hg.grad.detach().to(omega.device)
        new = mirror_step(omega, grad, eta)
        self.steps_taken += 1
        info = {"hypergradient": hg.method, "val_loss": hg.val_loss,
                "direct": hg.direct.tolist(), "second": hg.second.tolist(), "seconds": hg.seconds}
        return UpdateResult(omega=new, grad=grad, eta=eta, info=info)

    def state_dict(self) -> dict:
        return {"steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        self.steps_taken = int(state.get("steps_taken", 0))


class ConstantUpdater:
    """ω held at one point of the simplex; ``step`` returns it unchanged (no validation data used)."""

    needs_validation = False

    def __init__(self, omega: Tensor, name: str):
        self.name = name
        self.omega = omega.to(torch.float64)

    def initial_omega(self) -> Tensor:
        return self.omega.clone()

    def step(self, ctx: OuterContext) -> UpdateResult:
        if ctx.omega.shape != self.omega.shape:
            raise ValueError(f"updater {self.name!r}: got ω of shape {tuple(ctx.omega.shape)}, "
                             f"expected {tuple(self.omega.shape)}")
        return UpdateResult(omega=self.omega.clone(), grad=None, eta=0.0, info={"updater": self.name})

    def state_dict(self) -> dict:
        return {"omega": self.omega.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if "omega" in state:
            omega = torch.tensor(state["omega"], dtype=torch.float64)
            if omega.shape != self.omega.shape:
                raise ValueError(f"updater {self.name!r}: saved ω has {omega.numel()} entries, "
                                 f"expected {self.omega.numel()}")
            self.omega = omega


def make_mirror(cfg, num_peers: int) -> MirrorUpdater:
    """Mirror descent along the exact (or, if configured, first-order) hypergradient; η warm-up + cosine."""
    return MirrorUpdater.from_config(cfg, num_peers)


def make_uniform(cfg, num_peers: int) -> ConstantUpdater:
    """ω fixed at 1/M for every peer (Deep Mutual Learning, Zhang et al. 2018)."""
    return ConstantUpdater(uniform_omega(_check_peers("uniform", num_peers)), "uniform")


def make_fixed(cfg, num_peers: int) -> ConstantUpdater:
    """ω fixed at the user's ``fixed_omega``, normalised to sum 1."""
    num_peers = _check_peers("fixed", num_peers)
    weights = torch.tensor(list(cfg.fixed_omega), dtype=torch.float64)
    if weights.numel() != num_peers:
        raise ValueError(f"updater 'fixed': fixed_omega has {weights.numel()} weights, needs one per peer "
                         f"({num_peers})")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"updater 'fixed': fixed_omega must be finite, non-negative and not all zero, "
                         f"got {weights.tolist()}")
    return ConstantUpdater(weights / weights.sum(), "fixed")


@hookimpl
def wml_register_updaters(register):
    register("mirror", make_mirror,
             help="Mirror descent on ω along the exact one-step hypergradient (or first-order); η warm-up + cosine.")
    register("uniform", make_uniform, help="ω fixed at 1/M (Deep Mutual Learning).")
    register("fixed", make_fixed, help="ω fixed at fixed_omega, normalised to sum 1.")
