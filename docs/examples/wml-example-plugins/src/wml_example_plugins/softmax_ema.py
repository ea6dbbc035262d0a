"""``softmax_ema``: ω = softmax(−m/τ), with m an exponential moving average of each peer's own
held-out cross-entropy. Simple and cheap; unlike ``mirror`` it ignores how the peers combine in the
ensemble (the defect wml's method.md §10 warns about), so it is an example, not a recommendation.
It does report that ensemble's loss, the outer objective L_2 every updater is judged by, computed
by the contract's own ``ensemble_loss`` (so the report plots it beside mirror's).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wml_framework import hookimpl
from wml_framework.api import Option, OuterContext, ReferencePoint, UpdateResult, ensemble_loss, uniform_omega


class SoftmaxEMA:
    needs_validation = True    # True: the run calls step() every outer_every steps with a held-out batch

    def __init__(self, num_peers: int, decay: float, tau: float):
        self.num_peers, self.decay, self.tau = num_peers, decay, tau
        self.ema = None        # float64 (M,), or None before the first step

    def initial_omega(self) -> torch.Tensor:
        return uniform_omega(self.num_peers)

    def step(self, ctx: OuterContext) -> UpdateResult:
        if not bool((ctx.val.labels != -100).any()):   # no scored held-out token (masking can draw none): ω stays
            return UpdateResult(omega=ctx.omega.detach().clone(), eta=0.0, val_loss=0.0)
        logits = self._held_out_logits(ctx)
        losses = torch.stack([F.cross_entropy(z.reshape(-1, z.shape[-1]).double(), ctx.val.labels.reshape(-1),
                                              ignore_index=-100) for z in logits])   # each peer's own CE
        self.ema = losses if self.ema is None else self.decay * self.ema + (1 - self.decay) * losses
        omega = torch.softmax(-self.ema / self.tau, dim=0)
        val_loss = float(ensemble_loss(logits, ctx.val.labels, ctx.omega))   # the outer objective L_2, logged
        return UpdateResult(omega=omega, eta=1 - self.decay, val_loss=val_loss, info={"ema": self.ema.tolist()})

    @staticmethod
    def _held_out_logits(ctx: OuterContext) -> list:
        """Every peer's logits on the held-out batch, in eval mode (then restored)."""
        modes = [(m, m.training) for peer in ctx.peers for m in peer.modules()]
        for peer in ctx.peers:
            peer.eval()
        try:
            with torch.no_grad():   # for_peer: the inputs may differ per peer
                return [ctx.forward(peer, ctx.val.for_peer(i)) for i, peer in enumerate(ctx.peers)]
        finally:
            for m, training in modes:
                m.training = training

    def state_dict(self) -> dict:
        return {"ema": None if self.ema is None else self.ema.tolist()}

    def load_state_dict(self, state: dict) -> None:
        ema = state.get("ema")
        self.ema = None if ema is None else torch.tensor(ema, dtype=torch.float64)


def make_softmax_ema(cfg, num_peers: int, *, decay: float, tau: float) -> SoftmaxEMA:
    """ω = softmax(−EMA of held-out losses / τ)."""
    return SoftmaxEMA(num_peers, decay, tau)


def first_step(problem) -> dict:
    """A fresh updater's first step: ω = softmax(−ℓ/τ), ℓ_i = wml_reference.cross_entropy of peer i."""
    import wml_reference as R

    losses = np.array([R.cross_entropy(x @ W, problem.y_val) for x, W in zip(problem.x_val, problem.weights)])
    a = -losses / problem.options["tau"]
    return {"omega": np.exp(a - a.max()) / np.exp(a - a.max()).sum()}


@hookimpl
def wml_register_updaters(register):
    register("softmax_ema", make_softmax_ema,
             options=[Option("decay", 0.9, "EMA decay of the held-out losses.", low=0.0, high=1.0, high_open=True),
                      Option("tau", 1.0, "Softmax temperature τ (nats).", low=0.0, low_open=True)],
             references=[ReferencePoint("first step: softmax(−CE/τ)", first_step, {"tau": 0.7})])
