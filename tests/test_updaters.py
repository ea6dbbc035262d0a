"""The updater plugins (mirror, uniform, fixed), the η schedule and the mirror step, against the
reference, and the promise that an outer step leaves the peers exactly as it found them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import wml_reference as R
from wml_framework import config
from wml_framework.api import Batch, OuterContext
from wml_framework.plugin_system.host import PluginError, get_host
from wml_framework.training.schedules import warmup_cosine
from wml_framework.verify.problems import linear_peers
from wml_plugins.losses.wml import WMLLoss
from wml_plugins.updaters.mirror import MirrorUpdater, mirror_step


def cfg(**values):
    return config.from_dict(values, check_plugins=False)


def linear_problem(M: int, seed: int, outer_step: int = 0, inner_lr: float = 0.5, alpha=0.4, T=1.6):
    g = torch.Generator().manual_seed(seed)
    V, widths = 6, [3 + (k % 3) for k in range(M)]
    peers = linear_peers(widths, V, 0.7, g)
    Xt = [torch.randn(9, d, generator=g, dtype=torch.float64) for d in widths]
    Xv = [torch.randn(8, d, generator=g, dtype=torch.float64) for d in widths]
    yt, yv = torch.randint(0, V, (9,), generator=g), torch.randint(0, V, (8,), generator=g)
    yt[1], yv[3] = -100, -100
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    ctx = OuterContext(peers=peers, loss=WMLLoss(alpha, T), omega=w / w.sum(), train=Batch(Xt, yt),
                       val=Batch(Xv, yv), inner_lr=inner_lr, outer_step=outer_step)
    ref_args = ([x.numpy() for x in Xt], yt.numpy(), [x.numpy() for x in Xv], yv.numpy(),
                [p.weight.detach().numpy().T.copy() for p in peers])
    return ctx, ref_args


# ------------------------------------------------------------------ schedule and mirror step

def test_warmup_cosine_shape():
    peak, floor, warm, decay = 0.25, 0.0025, 3, 20
    values = [warmup_cosine(s, peak, floor, warm, decay) for s in range(30)]
    assert values[0] == pytest.approx(peak / 4) and values[2] == pytest.approx(3 * peak / 4)
    assert values[3] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))           # non-increasing after warm-up
    assert values[20] == floor and values[29] == floor
    mid = warmup_cosine((warm + decay) / 2, peak, floor, warm, decay)
    assert mid == pytest.approx((peak + floor) / 2)
    assert warmup_cosine(0, 1.0, 0.1, 0, 10) == 1.0                      # no warm-up
    assert warmup_cosine(5, 1.0, 0.1, 5, 5) == 0.1                       # decay ends with the warm-up
    with pytest.raises(ValueError):
        warmup_cosine(-1, 1.0, 0.1, 2, 10)
    with pytest.raises(ValueError):
        warmup_cosine(1, 0.1, 1.0, 2, 10)


def test_mirror_step_matches_reference_and_is_safe():
    g = torch.Generator().manual_seed(0)
    for M in range(1, 7):
        w = torch.rand(M, generator=g, dtype=torch.float64) + 0.01
        w /= w.sum()
        grad = torch.randn(M, generator=g, dtype=torch.float64)
        out = mirror_step(w, grad, 0.3)
        assert np.allclose(out.numpy(), R.mirror_step(w.numpy(), grad.numpy(), 0.3), rtol=1e-12, atol=1e-15)
    w = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    out = mirror_step(w, torch.tensor([-1e6, 1e6, 0.0], dtype=torch.float64), 1e3)
    assert torch.isfinite(out).all() and out[0] == 0.0 and float(out.sum()) == pytest.approx(1.0)


# ------------------------------------------------------------------ mirror updater

@pytest.mark.parametrize("M", [1, 2, 3, 6])
def test_mirror_update_matches_reference(M):
    ctx, args = linear_problem(M, seed=M, outer_step=4)
    c = cfg(omega_lr=0.3, omega_min_lr=0.01, omega_warmup_iters=2, omega_decay_iters=10, loss_alpha=0.4,
            temperature=1.6)
    upd = get_host().create("updater", "mirror", c, M)
    assert upd.needs_validation
    res = upd.step(ctx)
    w = ctx.omega.numpy()
    ref = R.hypergradient(*args, w, 0.4, 1.6, ctx.inner_lr)
    assert np.max(np.abs(res.grad.numpy() - ref)) <= 1e-8 * max(np.max(np.abs(ref)), 1e-6)
    assert res.eta == pytest.approx(warmup_cosine(4, 0.3, 0.01, 2, 10))
    assert np.allclose(res.omega.numpy(), R.mirror_step(w, ref, res.eta), rtol=1e-10, atol=1e-14)
    assert res.omega.dtype == torch.float64 and res.info["hypergradient"] == "exact"
    assert isinstance(res.val_loss, float) and len(res.info["direct"]) == len(res.info["second"]) == M


def test_first_order_variant_is_named_and_matches_reference():
    ctx, args = linear_problem(3, seed=9)
    upd = get_host().create("updater", "mirror", cfg(hypergradient="first_order"), 3)
    res = upd.step(ctx)
    assert res.info["hypergradient"] == "first_order"
    ref = R.hypergradient_first_order(args[2], args[3], args[4], ctx.omega.numpy())
    assert np.allclose(res.grad.numpy(), ref, rtol=1e-10, atol=1e-14)
    exact = get_host().create("updater", "mirror", cfg(), 3).step(ctx)
    assert not np.allclose(exact.grad.numpy(), ref, rtol=1e-6)        # γ > 0: the two really differ


def test_mirror_leaves_peers_exactly_as_found():
    ctx, _ = linear_problem(3, seed=5)
    wrapped = [nn.Sequential(nn.Dropout(0.0), p) for p in ctx.peers]
    wrapped[0].train()
    wrapped[1].eval()
    wrapped[2].train()
    wrapped[2][0].eval()                                # a mixed state must come back as it was
    ctx.peers = wrapped
    before = [[p.detach().clone() for p in m.parameters()] for m in wrapped]
    modes = [[x.training for x in m.modules()] for m in wrapped]
    MirrorUpdater(3).step(ctx)
    for m, b, mode in zip(wrapped, before, modes):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), b))
        assert [x.training for x in m.modules()] == mode
        assert all(p.grad is None for p in m.parameters())


def test_mirror_state_and_schedule_follow_outer_step():
    upd = MirrorUpdater(2, omega_lr=1.0, omega_min_lr=0.1, omega_warmup_iters=1, omega_decay_iters=5)
    assert [round(upd.eta(s), 6) for s in (0, 1, 5, 9)] == [0.5, 1.0, 0.1, 0.1]
    ctx, _ = linear_problem(2, seed=2)
    first = upd.step(ctx)
    assert upd.state_dict() == {}          # η comes from ctx.outer_step: nothing to carry over
    fresh = MirrorUpdater(2, omega_lr=1.0, omega_min_lr=0.1, omega_warmup_iters=1, omega_decay_iters=5)
    fresh.load_state_dict(upd.state_dict())
    assert torch.equal(fresh.step(ctx).omega, first.omega)
    assert torch.allclose(upd.initial_omega(), torch.full((2,), 0.5, dtype=torch.float64))


def test_mirror_rejects_bad_settings_naming_the_plugin():
    with pytest.raises(ValueError, match="updater 'mirror'"):
        MirrorUpdater(2, hypergradient="second_order")
    with pytest.raises(ValueError, match="updater 'mirror'"):
        MirrorUpdater(0)


# ------------------------------------------------------------------ uniform and fixed

def test_uniform_is_deep_mutual_learning():
    ctx, _ = linear_problem(4, seed=3)
    upd = get_host().create("updater", "uniform", cfg(), 4)
    assert not upd.needs_validation
    for step in range(3):
        ctx.outer_step = step
        res = upd.step(ctx)
        assert torch.equal(res.omega, torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.equal(upd.initial_omega(), torch.full((4,), 0.25, dtype=torch.float64))


def test_fixed_normalises_and_validates():
    ctx, _ = linear_problem(3, seed=4)
    upd = get_host().create("updater", "fixed", cfg(fixed_omega=[1.0, 1.0, 2.0]), 3)
    assert torch.allclose(upd.initial_omega(), torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    assert torch.allclose(upd.step(ctx).omega, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    clone = get_host().create("updater", "fixed", cfg(fixed_omega=[1.0, 1.0, 1.0]), 3)
    clone.load_state_dict(upd.state_dict())
    assert torch.allclose(clone.initial_omega(), upd.initial_omega())
    with pytest.raises(PluginError, match="updaters.*fixed_omega has 2 weights"):
        get_host().create("updater", "fixed", cfg(fixed_omega=[1.0, 2.0]), 3)
    with pytest.raises(PluginError, match="updaters.*fixed_omega"):
        get_host().create("updater", "fixed", dataclasses.replace(cfg(), fixed_omega=[0.0, 0.0, 0.0]), 3)


def test_updaters_registered():
    host = get_host()
    assert {"mirror", "uniform", "fixed"} <= set(host.names("updater"))
    assert all(host.get("updater", n).plugin == "updaters" for n in ("mirror", "uniform", "fixed"))
    assert math.isclose(float(host.create("updater", "mirror", cfg(), 5).initial_omega().sum()), 1.0)
