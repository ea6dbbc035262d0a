"""The fitted ω: the exact minimiser of the ensemble's loss on fixed blocks, never worse than a peer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wml_framework.evaluation.omega_fit import MixtureProblem, fit_omega, solve


def _problem(models: int = 2, positions: int = 400, vocab: int = 11, seed: int = 0) -> MixtureProblem:
    """Peers that each know the target partly, with their own noise: the best mixture is inside the
    simplex, not at a vertex."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(vocab, (positions,), generator=gen)
    truth = 3.0 * torch.nn.functional.one_hot(y, vocab).float()
    z = torch.stack([truth * (0.5 + 0.3 * i) + 2.0 * torch.randn(positions, vocab, generator=gen)
                     for i in range(models)], dim=1)
    return MixtureProblem([z[:150], z[150:]], [y[:150], y[150:]])   # two chunks: the sums must add up


def _reference_loss(problem: MixtureProblem, omega) -> float:
    """numpy cross-entropy of the mixture, written independently of the module."""
    total = 0.0
    for z, y in zip(problem.chunks, problem.targets):
        mixed = np.einsum("nmv,m->nv", z.double().numpy(), np.asarray(omega, dtype=np.float64))
        top = mixed.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(mixed - top).sum(axis=1))
        total += float((lse - mixed[np.arange(len(y)), y.numpy()]).sum())
    return total / problem.positions


def test_the_fit_matches_a_brute_force_grid_on_two_peers():
    """Catches: a wrong loss (checked against numpy), a solver that stops at its start or at a vertex
    (the optimum here is inside), and a fit that reports a loss it does not reach."""
    problem = _problem()
    grid = np.linspace(0.0, 1.0, 2001)
    losses = [_reference_loss(problem, [a, 1 - a]) for a in grid]
    best = int(np.argmin(losses))
    assert 0 < best < len(grid) - 1                                   # an inside optimum, or the test proves little
    omega, loss, solver = solve(problem, [0.9, 0.1])
    assert solver == "SLSQP"
    assert abs(omega[0] - grid[best]) < 2e-3 and omega.sum() == pytest.approx(1.0)
    assert loss == pytest.approx(_reference_loss(problem, omega), rel=1e-6)
    assert loss <= losses[best] + 1e-7


def test_the_gradient_is_exact():
    """Catches: a sign or a missing term in the gradient (the softmax part or the target part)."""
    problem = _problem(models=3, seed=1)
    w = np.array([0.2, 0.5, 0.3])
    _, grad = problem.value_and_grad(w)
    eps = 1e-4
    numeric = [(problem.value(w + eps * e) - problem.value(w - eps * e)) / (2 * eps) for e in np.eye(3)]
    assert np.allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_the_fit_of_real_peers_beats_every_peer_and_the_trained_omega(tmp_path):
    """Catches: a fit that loses to the best peer or to the ω it started from on its own blocks (the
    convex problem's minimum can do neither), and peer losses not measured on the same blocks.
    Peers of different quality so that neither vertex nor the start is trivially optimal."""
    from run_helpers import tiny_loop

    cfg, data, loop = tiny_loop(tmp_path, num_peers=3)
    with torch.no_grad():                    # make the peers differ: one much sharper than the others
        for p in loop.peers[1].parameters():
            p.mul_(3.0)
    start = [0.6, 0.3, 0.1]
    fit = fit_omega(loop.peers, data.val_omega, cfg.block_size, cfg.batch_size, 8, start=start)
    assert fit.loss <= min(fit.peer_losses) + 1e-9 and fit.loss <= fit.start_loss + 1e-9
    assert fit.blocks == 8 and fit.tokens == 8 * cfg.block_size
    assert np.all(fit.omega >= 0) and fit.omega.sum() == pytest.approx(1.0)
    problem_peer = fit_omega(loop.peers[:1], data.val_omega, cfg.block_size, cfg.batch_size, 8, start=[1.0])
    assert problem_peer.loss == pytest.approx(fit.peer_losses[0], rel=1e-6)


def test_the_memory_cap_keeps_fewer_blocks(tmp_path):
    """Catches: a cap that is ignored (every block's logits kept however many bytes they take)."""
    from run_helpers import tiny_loop

    cfg, data, loop = tiny_loop(tmp_path)
    one_batch = cfg.batch_size * cfg.block_size * len(loop.peers) * loop.peers[0].config.vocab_size * 4
    fit = fit_omega(loop.peers, data.val_omega, cfg.block_size, cfg.batch_size, 16, start=[0.5, 0.5],
                    memory=one_batch + 1)
    assert fit.blocks == cfg.batch_size


def test_compare_reads_both_ensembles_from_a_summary():
    """Catches: `wml compare` reading one ensemble only, or the fitted one under the trained one's name."""
    from wml_framework.compare.results import ensembles_of, ensembles_table

    summary = {"peers": [{"val_loss": 4.8}, {"val_loss": 4.7}], "ensemble_val_loss": 4.75,
               "fitted_ensemble_val_loss": 4.69, "fitted_omega": [0.3, 0.7],
               "ensemble_omega_half_loss": 5.1, "fitted_ensemble_omega_half_loss": 5.0}
    e = ensembles_of(summary)
    assert (e["trained"], e["fitted"], e["best_peer"]) == (4.75, 4.69, 4.7)
    method = {"label": "wml", "ensembles": {k: {"mean": e[k], "std": None} for k in ("trained", "fitted", "best_peer")}}
    assert "| wml | 4.7500 | 4.6900 | 4.7000 |" in ensembles_table({"methods": [method]}, "held-out loss")
