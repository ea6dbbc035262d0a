"""Updaters that hold ω fixed: ``uniform`` (1/M, Deep Mutual Learning) and ``fixed`` (the user's ω).

They say ``needs_validation = False``, so a run never steps them and no held-out batch is drawn
for them; ``step`` exists for callers that step every updater alike and returns ω unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wml_framework.api import OuterContext, UpdateResult, uniform_omega

from .mirror import check_peers

__all__ = ["ConstantUpdater", "make_uniform", "make_fixed"]


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


def make_uniform(cfg, num_peers: int) -> ConstantUpdater:
    """ω fixed at 1/M for every peer (Deep Mutual Learning, Zhang et al. 2018)."""
    return ConstantUpdater(uniform_omega(check_peers("uniform", num_peers)), "uniform")


def make_fixed(cfg, num_peers: int) -> ConstantUpdater:
    """ω fixed at the user's ``fixed_omega``, normalised to sum 1."""
    num_peers = check_peers("fixed", num_peers)
    weights = torch.tensor(list(cfg.fixed_omega), dtype=torch.float64)
    if weights.numel() != num_peers:
        raise ValueError(f"updater 'fixed': fixed_omega has {weights.numel()} weights, needs one per peer "
                         f"({num_peers})")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"updater 'fixed': fixed_omega must be finite, non-negative and not all zero, "
                         f"got {weights.tolist()}")
    return ConstantUpdater(weights / weights.sum(), "fixed")
