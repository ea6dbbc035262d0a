"""The Adam-aware hypergradient (``hypergradient = "exact_adam"``): the torch computation against the
NumPy reference with a preconditioner (1e-8, float64), the preconditioner against what AdamW really
does, and the trainer's wiring (its D reaches the updater; reusing the inner step changes nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from run_helpers import tiny_loop
from test_hypergradient import linear_problem

import wml_reference as R
from wml_framework.api import AdamPreconditioner
from wml_framework.training.adam_precond import adam_preconditioner, peer_diagonal
from wml_plugins.losses.wml import WMLLoss
from wml_plugins.updaters.hypergrad import DOUBLE_VJP, JVP, hypergradient


def _random_diag(peers, seed):
    g = torch.Generator().manual_seed(seed)
    return AdamPreconditioner([[torch.exp(torch.empty_like(p.weight).uniform_(-3, 3, generator=g))] for p in peers])


@pytest.mark.parametrize("M", [1, 2, 3, 5])
@pytest.mark.parametrize("tangents", [DOUBLE_VJP, JVP])
def test_linear_peers_match_the_preconditioned_reference(M, tangents):
    """Would catch: D applied to the virtual step but not to the tangent direction (or the reverse),
    D transposed, the plain exact route taken instead."""
    peers, train, val, w, args = linear_problem(M, seed=10 + M)
    pre = _random_diag(peers, M)
    alpha, T, gamma = 0.4, (1.0 if M % 2 else 1.6), 0.2
    hg = hypergradient(peers, WMLLoss(alpha, T), w, train, val, gamma, tangents=tangents, method="exact_adam",
                       preconditioner=pre)
    D = [d[0].numpy().T.copy() for d in pre.diag]
    ref = R.hypergradient(*args, w.numpy(), alpha, T, gamma, precond=D)
    assert np.max(np.abs(hg.grad.numpy() - ref)) <= 1e-8 * max(np.max(np.abs(ref)), 1e-6)
    assert hg.method == "exact_adam"
    if M > 1:   # and it is not the SGD step's hypergradient
        plain = R.hypergradient(*args, w.numpy(), alpha, T, gamma)
        assert np.max(np.abs(plain - ref)) > 1e-6 * max(np.max(np.abs(ref)), 1e-6)


def test_exact_adam_without_a_preconditioner_says_what_is_missing():
    peers, train, val, w, _ = linear_problem(2, seed=3)
    with pytest.raises(ValueError, match="exact_adam.*preconditioner"):
        hypergradient(peers, WMLLoss(), w, train, val, 0.1, method="exact_adam")


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_the_diagonal_is_the_coefficient_adamw_puts_on_the_gradient(clip):
    """After a few real steps, the AdamW update equals −lr·D⊙(this gradient) − (the momentum part).
    Would catch: the step count off by one, v̂ without the current gradient, a missing (1−β1) or
    bias correction, the clipping factor left out."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    lr, b1, b2, eps = 0.01, 0.9, 0.95, 1e-8
    opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        if clip:
            torch.nn.utils.clip_grad_norm_([p], clip)
        opt.step()
    g = torch.randn_like(p) * 3
    p.grad = g.clone()
    (D,) = peer_diagonal(opt, [p], clip)
    state = opt.state[p]
    t = int(state["step"]) + 1
    c = min(1.0, clip / (float(g.norm()) + 1e-6)) if clip else 1.0
    v_hat = (b2 * state["exp_avg_sq"] + (1 - b2) * (c * g) ** 2) / (1 - b2 ** t)
    momentum = -lr * b1 * state["exp_avg"] / (1 - b1 ** t) / (v_hat.sqrt() + eps)
    before = p.detach().clone()
    if clip:
        torch.nn.utils.clip_grad_norm_([p], clip)
    opt.step()
    assert torch.allclose(p.detach() - before, -lr * D * g + momentum, rtol=1e-10, atol=1e-14)


def test_the_trainer_hands_its_adam_diagonal_to_exact_adam(tmp_path):
    """The outer step of a run with ``exact_adam`` receives the D of the optimizer step it precedes,
    built from the step's whole gradient; reusing the inner step's graph gives the fresh result.
    Would catch: no preconditioner offered, D built from the last micro-batch or after clipping."""
    cfg, data, loop = tiny_loop(tmp_path, hypergradient="exact_adam", dtype="float64", num_batches=2,
                                grad_clip=1e-3, outer_every=1)
    seen = {}
    real_step = loop.updater.step

    def spy(ctx):
        seen["ctx"] = ctx
        seen["grads"] = [[p.grad for p in peer.parameters()] for peer in ctx.peers]
        return real_step(ctx)

    loop.updater.step = spy
    for _ in range(2):   # the second step has Adam state
        means, last = loop.accumulate(capture=loop.offers_inner_gradients)
        whole = [[p.grad.detach().clone() for p in peer.parameters()] for peer in loop.peers]
        record = loop.outer_step(last)
        ctx = seen["ctx"]
        assert isinstance(ctx.preconditioner, AdamPreconditioner)
        for opt, peer, grads, diag in zip(loop.optimizers, loop.peers, whole, ctx.preconditioner.diag):
            params = list(peer.parameters())
            for p, g in zip(params, grads):
                p.grad = g
            expected = peer_diagonal(opt, params, cfg.grad_clip)
            assert all(torch.equal(a, b) for a, b in zip(diag, expected))
        assert record["info"]["hypergradient"] == "exact_adam" and record["skipped"] is None
        fresh = hypergradient(loop.peers, loop.loss, ctx.omega, ctx.train, ctx.val, ctx.inner_lr, method="exact_adam",
                              tangents=JVP, preconditioner=ctx.preconditioner)
        # a component that is a difference of larger terms (here the first: −3.6e-4, with a gap of 5e-9
        # between reused and fresh) agrees to ~1e-6 of the vector's size, not of its own
        scale = float(fresh.grad.abs().max())
        assert torch.allclose(torch.tensor(record["grad"], dtype=torch.float64), fresh.grad, rtol=1e-6, atol=1e-6 * scale)
        loop.optimizer_steps(means[2])
        loop.state.step += 1
    assert all(len(d) == len([p for p in peer.parameters() if p.requires_grad])
               for d, peer in zip(adam_preconditioner(loop.optimizers, loop.peers, 0.0).diag, loop.peers))
