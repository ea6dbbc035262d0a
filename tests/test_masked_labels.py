"""Masked labels (issue 22 §2): the losses, the ensemble loss and the hypergradient need no change
for masked-LM objectives, because they score only labelled positions. This file proves it for the
torch code the trainer runs: BERT/RoBERTa-style labels (about 15% of the positions scored, a
sequence with none scored, or exactly one scored position in the whole batch) give, in float64,
the values and gradients of the float64 oracle ``wml_reference`` (itself checked against finite
differences on such labels in tests/test_reference.py), and the properties that make a masked batch
safe hold: a loss on masked labels is the loss on the kept rows alone, padding and the place of
ignored rows change nothing, and a batch with no scored position gives 0 with no gradient.
Each test's docstring names the wrong code it catches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wml_reference as R
from wml_framework.api import IGNORE_INDEX, Batch, ensemble_loss
from wml_framework.verify.problems import linear_peers
from wml_plugins.losses.ce import CELoss
from wml_plugins.losses.kd import KDLoss
from wml_plugins.losses.wml import WMLLoss
from wml_plugins.updaters.hypergrad import DOUBLE_VJP, JVP, hypergradient

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: float64 agreement with the oracle: the torch code and the oracle round differently, nothing more
TOL = 1e-10

LOSSES = {"wml": lambda: WMLLoss(0.35, 1.7), "wml-T1": lambda: WMLLoss(0.6, 1.0), "kd": lambda: KDLoss(0.6, 2.5),
          "ce": lambda: CELoss()}


def rel(a, b, floor: float = 1e-4) -> float:
    """max |a − b| / max |b|, the scale at least ``floor`` (a part that is exactly 0 in the oracle,
    like the KL of a single peer, comes out of the mixture form as ±1e-16)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor)) if b.size else 0.0


def mask_labels(g: torch.Generator, shape: tuple, V: int, layout: str) -> torch.Tensor:
    """``bert``: each position scored with probability 0.15, the first sequence never (when B > 1);
    ``one``: exactly one scored position in the whole batch. Never all ignored."""
    y = torch.randint(0, V, shape, generator=g)
    allowed = torch.ones(shape, dtype=torch.bool)
    if len(shape) == 2 and shape[0] > 1:
        allowed[0] = False
    scored = (torch.rand(shape, generator=g) < 0.15) & allowed
    if layout == "one" or not bool(scored.any()):
        free = allowed.view(-1).nonzero().squeeze(-1)
        scored = torch.zeros(shape, dtype=torch.bool)
        scored.view(-1)[free[int(torch.randint(len(free), (1,), generator=g))]] = True
    y[~scored] = IGNORE_INDEX
    return y


def masked_problem(M: int, seed: int, layout: str, shape=(4, 16), V: int = 9):
    g = torch.Generator().manual_seed(seed)
    zs = [3.0 * torch.randn(*shape, V, generator=g, dtype=torch.float64) for _ in range(M)]
    teacher = 3.0 * torch.randn(*shape, V, generator=g, dtype=torch.float64)
    y = mask_labels(g, shape, V, layout)
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    return zs, y, w / w.sum(), teacher


def oracle(name: str, loss, zs, y, w, teacher) -> dict:
    """What ``wml_reference`` says the loss computes (wml_plugins/losses/references.py, written out)."""
    z, yn, wn, q = [t.numpy() for t in zs], y.numpy(), w.numpy(), teacher.numpy()
    ce = [R.cross_entropy(zi, yn) for zi in z]
    if name.startswith("wml"):
        a, T = loss.alpha, loss.temperature
        kl = np.array([[R.kl_div(z[j], z[i], yn, T) if i != j else 0.0 for j in range(len(z))] for i in range(len(z))])
        return {"per_peer": R.wml_losses(z, yn, wn, a, T), "ce": ce, "kl": kl @ wn,
                "grad": R.wml_losses_grad(z, yn, wn, a, T), "grad_omega": a * kl.sum(axis=0)}
    if name == "kd":
        a, T = loss.alpha_kd, loss.temperature
        return {"per_peer": [R.kd_loss(zi, q, yn, a, T) for zi in z], "ce": ce, "kl": [R.kl_div(q, zi, yn, T) for zi in z],
                "grad": [R.kd_loss_grad(zi, q, yn, a, T) for zi in z], "grad_omega": np.zeros(len(z))}
    return {"per_peer": ce, "ce": ce, "kl": np.zeros(len(z)), "grad": [R.cross_entropy_grad(zi, yn) for zi in z],
            "grad_omega": np.zeros(len(z))}


def plugin_errors(name: str, M: int, seed: int, layout: str) -> dict:
    """Relative errors of a loss plugin against the oracle on one masked problem: values, parts,
    logit gradients on both code paths (ω constant: the fused path; ω requiring grad: the composed
    one), ``logit_grads``, ∂/∂ω."""
    loss = LOSSES[name]()
    zs, y, w, teacher = masked_problem(M, seed, layout)
    want = oracle(name, loss, zs, y, w, teacher)
    teacher_arg = teacher if loss.needs_teacher else None
    err = {}
    for path, omega_grad in (("ω const", False), ("ω grad", True)):
        leaves = [z.clone().requires_grad_() for z in zs]
        omega = w.clone().requires_grad_(omega_grad)
        res = loss(leaves, y, omega, teacher_logits=teacher_arg)
        for key in ("per_peer", "ce", "kl"):
            err[f"{key} ({path})"] = rel(getattr(res, key).detach().numpy(), want[key])
        grads = torch.autograd.grad(res.total, leaves + ([omega] if omega_grad else []), allow_unused=True)
        err[f"grad ({path})"] = max(rel(gz.numpy(), ref) for gz, ref in zip(grads, want["grad"]))
        if omega_grad:
            gw = grads[-1]
            err["grad_omega"] = rel(np.zeros(M) if gw is None else gw.numpy(), want["grad_omega"])
    if callable(getattr(loss, "logit_grads", None)):
        fast = loss.logit_grads(zs, y, w, teacher_logits=teacher_arg)
        err["logit_grads"] = max(rel(f.numpy(), ref) for f, ref in zip(fast, want["grad"]))
    return err


# ------------------------------------------------------------------ the plugins against the oracle

@pytest.mark.parametrize("layout", ["bert", "one"])
@pytest.mark.parametrize("M", [1, 2, 4])
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_agrees_with_the_oracle_on_masked_labels(name, M, layout):
    """Would catch: a token mean over B·T (or over sequences) instead of the n scored positions; an
    ignored row that enters the KL mixture, the teacher's entropy or the fused backward; a gradient
    written into ignored rows; ``logit_grads`` or the ω-path that mishandle the mask."""
    errors = plugin_errors(name, M, seed=100 * M + len(layout), layout=layout)
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, bad


@pytest.mark.parametrize("layout", ["bert", "one"])
@pytest.mark.parametrize("M", [1, 3])
def test_the_ensemble_loss_agrees_with_the_oracle_on_masked_labels(M, layout):
    """L_2 (what ω is tuned to lower) on a masked held-out batch. Would catch: the ensemble CE averaged
    over every position, or G = (s − onehot)/n written into ignored rows."""
    zs, y, w, _ = masked_problem(M, seed=7 + M, layout=layout)
    leaves = [z.clone().requires_grad_() for z in zs]
    omega = w.clone().requires_grad_()
    L2 = ensemble_loss(leaves, y, omega)
    *gz, gw = torch.autograd.grad(L2, leaves + [omega])
    z, yn, wn = [t.numpy() for t in zs], y.numpy(), w.numpy()
    assert rel(float(L2.detach()), R.ensemble_loss(z, yn, wn)) <= TOL
    assert rel(gw.numpy(), R.ensemble_loss_grad_omega(z, yn, wn)) <= TOL
    assert max(rel(a.numpy(), b) for a, b in zip(gz, R.ensemble_loss_grad_logits(z, yn, wn))) <= TOL


def masked_linear_problem(M: int, seed: int, layouts: tuple):
    g = torch.Generator().manual_seed(seed)
    V, widths = 5, [2 + (3 * k) % 5 for k in range(M)]
    peers = linear_peers(widths, V, 0.9, g)
    Xt = [torch.randn(24, d, generator=g, dtype=torch.float64) for d in widths]
    Xv = [torch.randn(20, d, generator=g, dtype=torch.float64) for d in widths]
    yt, yv = mask_labels(g, (24,), V, layouts[0]), mask_labels(g, (20,), V, layouts[1])
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    args = ([x.numpy() for x in Xt], yt.numpy(), [x.numpy() for x in Xv], yv.numpy(),
            [p.weight.detach().numpy().T.copy() for p in peers])
    return peers, Batch(Xt, yt), Batch(Xv, yv), w / w.sum(), args


@pytest.mark.parametrize("layouts", [("bert", "bert"), ("one", "bert"), ("bert", "one")], ids="-".join)
@pytest.mark.parametrize("M", [1, 3, 5])
@pytest.mark.parametrize("tangents", [DOUBLE_VJP, JVP])
def test_the_hypergradient_agrees_with_the_oracle_on_masked_labels(M, tangents, layouts):
    """The exact hypergradient (Theorem 1) on masked training and held-out batches, T = 1 (closed
    form without logits) and T ≠ 1. Would catch: an ignored token moving the virtual step θ' or
    entering ∇_θ L_2, or a second term normalised by the padded length."""
    peers, train, val, w, args = masked_linear_problem(M, seed=30 + M, layouts=layouts)
    for T in (1.0, 1.8):
        hg = hypergradient(peers, WMLLoss(0.35, T), w, train, val, 0.7, tangents=tangents)
        ref = R.hypergradient(*args, w.numpy(), 0.35, T, 0.7)
        assert rel(hg.grad.numpy(), ref) <= 1e-8, (T, hg.grad, ref)


# ------------------------------------------------------------------ properties (Hypothesis)

@st.composite
def masked_batches(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    M = draw(st.integers(1, 3))
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(1, 10)), draw(st.integers(2, 7))
    layout = draw(st.sampled_from(["bert", "one"]))
    name = draw(st.sampled_from(list(LOSSES)))
    zs, y, w, teacher = masked_problem(M, seed, layout, shape=(B, T), V=V)
    return name, zs, y, w, teacher


def _call(loss, zs, y, w, teacher, omega_grad=False):
    leaves = [z.clone().requires_grad_() for z in zs]
    omega = w.clone().requires_grad_(omega_grad)
    res = loss(leaves, y, omega, teacher_logits=teacher if loss.needs_teacher else None)
    return res, torch.autograd.grad(res.total, leaves)


@FAST
@given(masked_batches(), st.booleans())
def test_a_random_mask_gives_the_loss_of_the_kept_rows(batch, omega_grad):
    """Loss on masked labels = loss on only the kept rows (as one dense sequence); the gradient is that
    of the kept rows there and exactly 0 elsewhere. Would catch a mean over B·T, over sequences, or
    a gradient leaking into ignored rows (both code paths of ``wml``)."""
    name, zs, y, w, teacher = batch
    loss = LOSSES[name]()
    keep = y != IGNORE_INDEX
    res, grads = _call(loss, zs, y, w, teacher, omega_grad)
    kept = [z[keep].unsqueeze(0) for z in zs]
    res_k, grads_k = _call(loss, kept, y[keep].unsqueeze(0), w, teacher[keep].unsqueeze(0), omega_grad)
    for key in ("per_peer", "ce", "kl"):
        assert rel(getattr(res, key).detach().numpy(), getattr(res_k, key).detach().numpy()) <= 1e-12
    for g, gk in zip(grads, grads_k):
        assert torch.equal(g[~keep], torch.zeros_like(g[~keep]))
        assert rel(g[keep].numpy(), gk[0].numpy()) <= 1e-12


@FAST
@given(masked_batches(), st.floats(1e-3, 1e3), st.integers(1, 6))
def test_which_rows_are_ignored_not_how_many_or_where(batch, scale, pad):
    """Scaling the logits of ignored rows by any factor, padding the batch with ``pad`` more ignored
    positions and permuting the positions leave every value unchanged. Would catch a loss that
    normalises by the padded length or lets ignored logits into a softmax."""
    name, zs, y, w, teacher = batch
    loss = LOSSES[name]()
    V = zs[0].shape[-1]
    base = _call(loss, zs, y, w, teacher)[0].per_peer.detach()
    flat = [z.reshape(-1, V) for z in zs]
    yf, tf = y.reshape(-1), teacher.reshape(-1, V)
    ign = (yf == IGNORE_INDEX).unsqueeze(-1)
    scaled = [torch.where(ign, scale * z, z) for z in flat]
    g = torch.Generator().manual_seed(pad)
    padded = [torch.cat([z, 5.0 * torch.randn(pad, V, generator=g, dtype=z.dtype)]) for z in scaled]
    ypad = torch.cat([yf, torch.full((pad,), IGNORE_INDEX)])
    tpad = torch.cat([tf, torch.randn(pad, V, generator=g, dtype=tf.dtype)])
    perm = torch.randperm(len(ypad), generator=g)
    for zz, yy, tt in [(scaled, yf, tf), (padded, ypad, tpad), ([z[perm] for z in padded], ypad[perm], tpad[perm])]:
        got = _call(loss, [z.unsqueeze(0) for z in zz], yy.unsqueeze(0), w, tt.unsqueeze(0))[0].per_peer.detach()
        assert rel(got.numpy(), base.numpy()) <= 1e-12


@FAST
@given(masked_batches())
def test_all_labels_ignored_gives_zero_and_no_gradient(batch):
    """A micro-batch whose mask drew no position (possible at 15%): every loss, its parts and the
    ensemble loss are exactly 0 with zero gradients in the logits and in ω, and the fast paths
    (``logit_grads``, ``mixed_omega_grad``) give zeros. Would catch a division by n = 0 (NaN), a
    mean over the empty set (NaN), or a loss that falls back to scoring every position."""
    name, zs, y, w, teacher = batch
    loss = LOSSES[name]()
    y = torch.full_like(y, IGNORE_INDEX)
    teacher_arg = teacher if loss.needs_teacher else None
    leaves = [z.clone().requires_grad_() for z in zs]
    omega = w.clone().requires_grad_()
    res = loss(leaves, y, omega, teacher_logits=teacher_arg)
    for t in (res.total, res.per_peer, res.ce, res.kl):
        assert torch.equal(t.detach(), torch.zeros_like(t))
    grads = torch.autograd.grad(res.total, leaves + [omega], allow_unused=True)
    assert all(gr is None or float(gr.abs().max()) == 0.0 for gr in grads)
    if callable(getattr(loss, "logit_grads", None)):
        assert all(float(f.abs().max()) == 0.0 for f in loss.logit_grads(zs, y, w, teacher_logits=teacher_arg))
    tangents = [torch.randn_like(z) for z in zs]
    mixed = loss.mixed_omega_grad(zs, y, w, tangents, teacher_logits=teacher_arg)
    assert torch.equal(mixed, torch.zeros_like(mixed))
    ens = [z.clone().requires_grad_() for z in zs]
    L2 = ensemble_loss(ens, y, w)
    assert float(L2.detach()) == 0.0
    assert all(float(gr.abs().max()) == 0.0 for gr in torch.autograd.grad(L2, ens))


@pytest.mark.parametrize("tangents", [DOUBLE_VJP, JVP])
def test_the_hypergradient_of_an_all_ignored_batch(tangents):
    """No scored held-out token: L_2 ≡ 0, so the hypergradient is exactly 0 (ω stays put). No scored
    training token: ∇_θ L_1 = 0, θ' = θ, and the hypergradient is the first-order one of the oracle.
    Would catch a NaN from n = 0 in either step, or a fallback to scoring every position."""
    peers, train, val, w, args = masked_linear_problem(3, seed=5, layouts=("bert", "bert"))
    empty_val = Batch(val.inputs, torch.full_like(val.labels, IGNORE_INDEX))
    hg = hypergradient(peers, WMLLoss(0.35, 1.8), w, train, empty_val, 0.7, tangents=tangents)
    assert torch.equal(hg.grad, torch.zeros_like(hg.grad))
    empty_train = Batch(train.inputs, torch.full_like(train.labels, IGNORE_INDEX))
    hg = hypergradient(peers, WMLLoss(0.35, 1.8), w, empty_train, val, 0.7, tangents=tangents)
    Xt, yt, Xv, yv, W = args
    assert rel(hg.grad.numpy(), R.hypergradient_first_order(Xv, yv, W, w.numpy())) <= 1e-12
