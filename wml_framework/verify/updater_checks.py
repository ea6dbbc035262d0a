"""Checks of an updater plugin: generic properties every updater must have, and its reference points.

Generic: the initial and stepped ω are points of the simplex of the right shape; a step is
deterministic; it leaves the peers as it found them (parameters, ``.grad``, train/eval modes);
its state survives a ``state_dict`` round trip; a step on batches whose labels are all ignored stays
finite and on the simplex. An updater with ``needs_validation = False`` is never stepped in a run,
so only its initial ω and state are checked. Reference points: what the plugin declared its step
equals (ω, gradient, η, info), on linear peers, at several outer steps. The simplex check and the
reference points run again on masked-label problems (``outer_case(..., masked=True)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import Tensor

from ..api import IGNORE_INDEX, Batch, ReferencePoint
from ..plugin_system.simplex import OffSimplex, on_simplex
from .loss_checks import Failed, split_settings
from .problems import (
    MASKED_OUTER_STEPS,
    MASKED_STREAM,
    OUTER_STEPS,
    PEER_COUNTS,
    make_config,
    outer_case,
    rel,
)

__all__ = ["check_simplex", "UpdaterProblems", "initial_on_simplex", "step_on_simplex", "deterministic",
           "peers_untouched", "state_round_trip", "all_ignored", "check_reference"]


def check_simplex(omega, M: int, who: str) -> float:
    """|Σω − 1| of a ω the run's guard would accept; a ω it would refuse fails the check, in its words."""
    try:
        w = on_simplex(omega, M)
    except OffSimplex as exc:
        raise Failed(f"{who}: {exc} (M={M})") from None
    return abs(float(w.sum()) - 1.0)


def _snapshot(peers) -> list:
    """Parameters, their .grad (None or a copy) and every module's train/eval flag."""
    return [([p.detach().clone() for p in m.parameters()],
             [x.training for x in m.modules()],
             [None if p.grad is None else p.grad.detach().clone() for p in m.parameters()]) for m in peers]


class UpdaterProblems:
    """Makes an updater and the linear-peer contexts it is stepped on, for M = 1 … 6.

    ``make(config, options, M)`` creates the updater; ``make_loss(config)`` the loss that drives it."""

    def __init__(self, make: Callable, make_loss: Callable, seed: int):
        self.make, self.make_loss, self.seed = make, make_loss, seed

    def cases(self, settings: dict | None = None, outer_step: int = 3, masked: bool = False):
        """(M, config, OuterCase) for M = 1 … 6; ``masked``: the masked-label problems (own stream)."""
        g = torch.Generator().manual_seed(self.seed + (MASKED_STREAM if masked else 0))
        for M in PEER_COUNTS:
            cfg = make_config(M, **(settings or {}))
            yield M, cfg, outer_case(M, self.make_loss(cfg), g, outer_step, masked)


def initial_on_simplex(probs: UpdaterProblems) -> float:
    return max(check_simplex(probs.make(cfg, {}, M).initial_omega(), M, "initial_omega()") for M, cfg, _ in probs.cases())


def step_on_simplex(probs: UpdaterProblems, masked: bool = False) -> float:
    return max(check_simplex(probs.make(cfg, {}, M).step(case.ctx).omega, M, "step().omega")
               for M, cfg, case in probs.cases(masked=masked))


def deterministic(probs: UpdaterProblems) -> float:
    return max(rel(probs.make(cfg, {}, M).step(case.ctx).omega.detach().numpy(),
                   probs.make(cfg, {}, M).step(case.ctx).omega.detach().numpy()) for M, cfg, case in probs.cases())


def peers_untouched(probs: UpdaterProblems) -> float:
    worst = 0.0
    for M, cfg, case in probs.cases():
        case.ctx.peers[0].eval()                    # a mix of modes, which must come back as it was
        before = _snapshot(case.ctx.peers)
        probs.make(cfg, {}, M).step(case.ctx)
        for (pb, mb, gb), (pa, ma, ga) in zip(before, _snapshot(case.ctx.peers)):
            if mb != ma:
                raise Failed("step() changed the peers' train/eval modes")
            if any((x is None) != (y is None) or (x is not None and not torch.equal(x, y)) for x, y in zip(gb, ga)):
                raise Failed("step() changed the peers' .grad")
            worst = max([worst] + [float((x - y).abs().max()) for x, y in zip(pb, pa)])
    return worst


def state_round_trip(probs: UpdaterProblems, steps: bool) -> float:
    worst = 0.0
    for M, cfg, case in probs.cases():
        upd = probs.make(cfg, {}, M)
        if steps:
            upd.step(case.ctx)
        fresh = probs.make(cfg, {}, M)
        fresh.load_state_dict(upd.state_dict())
        if steps:
            a, b = fresh.step(case.ctx).omega, upd.step(case.ctx).omega
        else:
            a, b = fresh.initial_omega(), upd.initial_omega()
        worst = max(worst, rel(a.detach().numpy(), b.detach().numpy()))
    return worst


def all_ignored(probs: UpdaterProblems) -> float:
    """A step whose held-out batch, or whose training batch, has no scored position (a masked-LM
    batch can draw none): ω stays finite and on the simplex, a reported gradient is finite.
    Returns the worst |Σω − 1|."""
    worst = 0.0
    for M, cfg, case in probs.cases(masked=True):
        for which in ("val", "train"):
            batch = getattr(case.ctx, which)
            empty = Batch(batch.inputs, torch.full_like(batch.labels, IGNORE_INDEX))
            res = probs.make(cfg, {}, M).step(dataclasses.replace(case.ctx, **{which: empty}))
            who = f"step().omega with every {'held-out' if which == 'val' else 'training'} label ignored"
            worst = max(worst, check_simplex(res.omega, M, who))
            if res.grad is not None and not bool(torch.isfinite(torch.as_tensor(res.grad)).all()):
                raise Failed(f"UpdateResult.grad is not finite with every {which} label ignored (M={M})")
            if res.eta is not None and not math.isfinite(float(res.eta)):
                raise Failed(f"UpdateResult.eta is not finite with every {which} label ignored (M={M})")
    return worst


def check_reference(probs: UpdaterProblems, point: ReferencePoint, resolve: Callable = dict,
                    masked: bool = False) -> dict[str, float]:
    """Worst error per compared value (ω, grad, η; info must match) over M = 1 … 6 and OUTER_STEPS
    on the dense problems, or MASKED_OUTER_STEPS on the masked-label ones (``masked``)."""
    config_keys, options = split_settings(point)
    options = resolve(options)
    worst: dict[str, tuple] = {}
    for outer_step in MASKED_OUTER_STEPS if masked else OUTER_STEPS:
        for M, cfg, case in probs.cases(config_keys, outer_step, masked):
            res = probs.make(cfg, options, M).step(case.ctx)
            expected = point.expected(case.as_problem(cfg, options))
            for key, got in (("omega", res.omega), ("grad", res.grad), ("eta", res.eta)):
                if key not in expected:
                    continue
                if got is None:
                    raise Failed(f"UpdateResult.{key} is None, but the reference point gives a value")
                value = got.detach().numpy() if isinstance(got, Tensor) else float(got)
                err = rel(value, expected[key])
                if key not in worst or err > worst[key][0]:
                    worst[key] = (err, f"worst at M={M}, outer_step={outer_step}")
            for key, want in expected.get("info", {}).items():
                if res.info.get(key) != want:
                    raise Failed(f"info[{key!r}] is {res.info.get(key)!r}, expected {want!r}")
            unknown = set(expected) - {"omega", "grad", "eta", "info"}
            if unknown:
                raise Failed(f"the reference point returned unknown keys {sorted(unknown)}")
    return worst
