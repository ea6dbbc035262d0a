"""The captured backward (the last micro-batch before an outer step) accumulates the same gradient as
a plain backward, and hands the outer step that micro-batch's own gradient.

Would catch: the captured share not divided by ``num_batches`` (the last micro-batch would weigh
``num_batches`` times the others), the captured gradient added twice or not at all, and an
``InnerGradients.grads`` that is the accumulated gradient instead of the last micro-batch's.
"""

from __future__ import annotations

import torch
from run_helpers import tiny_loop


def _accumulate(loop, capture: bool):
    loop.gen_train.manual_seed(7)
    for peer in loop.peers:
        peer.zero_grad(set_to_none=True)
    means, last = loop.accumulate(capture=capture)
    grads = [[p.grad.clone() for p in peer.parameters()] for peer in loop.peers]
    return means, last, grads


def test_a_captured_step_accumulates_the_same_gradient_as_a_plain_one(tmp_path):
    _, _, loop = tiny_loop(tmp_path, num_batches=3)
    plain_means, _, plain = _accumulate(loop, capture=False)
    captured_means, last, captured = _accumulate(loop, capture=True)
    assert torch.allclose(plain_means, captured_means, rtol=1e-6, atol=1e-7)
    for a_peer, b_peer in zip(plain, captured):
        for a, b in zip(a_peer, b_peer):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()
    assert last.inner is not None


def test_the_outer_step_gets_the_last_micro_batchs_gradient(tmp_path):
    _, _, loop = tiny_loop(tmp_path, num_batches=3)
    _, last, _ = _accumulate(loop, capture=True)
    x, y = last.batch.inputs, last.batch.labels
    omega = loop.state.omega.to(torch.float32)
    for peer in loop.peers:
        peer.zero_grad(set_to_none=True)
    logits = [peer(input_ids=x).logits for peer in loop.peers]
    loop.loss(logits, y, omega).total.backward()
    for peer, grads in zip(loop.peers, last.inner.grads):
        for p, g in zip(peer.parameters(), grads):
            assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)
