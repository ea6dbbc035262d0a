"""An example wml plugin: the ``val-softmax`` peer-weight updater.

ω is pulled toward softmax(−ℓ/τ), where ℓ_i is peer i's own cross-entropy on the held-out batch,
by a geometric average with the current ω: log ω ← (1−β) log ω + β log softmax(−ℓ/τ), renormalised.
Unlike ``mirror`` it ignores how peers combine in the ensemble (the defect method.md §10 warns
about); it is here to show the plugin interface, not as a recommendation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wml_framework import hookimpl
from wml_framework.api import OuterContext, UpdateResult, uniform_omega

__version__ = "0.1.0"


class ValSoftmaxUpdater:
    """ω ← normalise(ω^(1−β) · softmax(−val_loss/τ)^β)."""

    needs_validation = True

    def __init__(self, num_peers: int, tau: float = 1.0, beta: float = 0.5):
        if num_peers < 1:
            raise ValueError(f"val-softmax needs at least one peer, got {num_peers}")
        if tau <= 0 or not 0 < beta <= 1:
            raise ValueError(f"val-softmax needs tau > 0 and beta in (0, 1], got tau={tau}, beta={beta}")
        self.num_peers, self.tau, self.beta = num_peers, float(tau), float(beta)
        self.updates = 0

    def initial_omega(self) -> torch.Tensor:
        return uniform_omega(self.num_peers)

    def step(self, ctx: OuterContext) -> UpdateResult:
        losses = torch.stack([self._val_loss(ctx, i) for i in range(len(ctx.peers))])
        target = torch.log_softmax(-losses / self.tau, dim=0)
        log_w = (1 - self.beta) * torch.log(ctx.omega.detach().to(torch.float64)) + self.beta * target
        omega = torch.softmax(log_w, dim=0)
        self.updates += 1
        return UpdateResult(omega=omega, grad=None, eta=self.beta, info={"val_loss": losses.tolist()})

    @staticmethod
    def _val_loss(ctx: OuterContext, i: int) -> torch.Tensor:
        """Peer i's mean token cross-entropy on the held-out batch, in eval mode (then restored)."""
        peer = ctx.peers[i]
        modes = [(m, m.training) for m in peer.modules()]
        peer.eval()
        try:
            with torch.no_grad():
                logits = ctx.forward(peer, ctx.val.for_peer(i))
        finally:
            for m, training in modes:
                m.training = training
        V = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, V).double(), ctx.val.labels.reshape(-1), ignore_index=-100)

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))


def make_val_softmax(cfg, num_peers: int) -> ValSoftmaxUpdater:
    """Pull ω toward softmax(−validation loss of each peer) (example third-party plugin)."""
    return ValSoftmaxUpdater(num_peers)


@hookimpl
def wml_register_updaters(register):
    register("val-softmax", make_val_softmax)
