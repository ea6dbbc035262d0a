"""The best ω on the ω half, solved exactly: the fitted ω of a run's exported ensemble.

The ensemble mixes logits, z = Σ_i ω_i z_i, so its cross-entropy is convex in ω on the simplex, and
every peer alone is a vertex of it: the minimum is never worse than the best peer, nor than the ω
that trained the peers. Mirror descent, which trains ω, takes one step per outer batch on peers that
are still moving; this module solves the fixed problem once, at the end, on fixed blocks of the ω half.
The peers' logits on those blocks are computed once and kept (float32, at most ``memory`` bytes), so
each value and gradient the solver asks for is only a mixture of stored logits, no forward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..api import IGNORE_INDEX, Objective, TokenInfo, attending, peer_logits
from .heldout import block_batch, block_starts
from .models import evaluating, model_device, normalised_weights, resolve_device

__all__ = ["FIT_MEMORY", "MixtureProblem", "OmegaFit", "collect_problem", "solve", "fit_omega"]

#: bytes of peer logits kept for the fit (float32); fewer blocks are used when they would take more
FIT_MEMORY = 1 << 28             # 256 MiB: each solver step reads it all a few times


class MixtureProblem:
    """Mean cross-entropy of Σ_i ω_i z_i over stored logits: ``chunks`` of (positions, models, vocab)
    with their ``targets`` (labelled positions only)."""

    def __init__(self, chunks: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]):
        self.chunks, self.targets = list(chunks), list(targets)
        self.positions = sum(len(t) for t in self.targets)
        if self.positions == 0:
            raise ValueError("the ω fit has no labelled positions to fit on")
        self.models = self.chunks[0].shape[1]
        # each position's target logit under every model: the linear part of the loss, kept once
        self._target_logits = [z[torch.arange(len(y)), :, y].double() for z, y in zip(self.chunks, self.targets)]

    def value_and_grad(self, omega) -> tuple[float, np.ndarray]:
        """Loss at ω (not renormalised: the solver keeps it on the simplex) and its exact gradient,
        ∂/∂ω_j = mean_t ⟨softmax(z_t), z_j,t⟩ − z_j,t[y_t]."""
        w = torch.as_tensor(np.asarray(omega, dtype=np.float64))
        total, grad = 0.0, torch.zeros(self.models, dtype=torch.float64)
        for z, zy in zip(self.chunks, self._target_logits):
            mixed = torch.einsum("nmv,m->nv", z, w.float())
            lse = torch.logsumexp(mixed.double(), dim=-1)
            total += float((lse - zy @ w).sum())
            probs = torch.softmax(mixed, dim=-1)
            grad += torch.einsum("nv,nmv->m", probs, z).double() - zy.sum(0)
        return total / self.positions, (grad / self.positions).numpy()

    def value(self, omega) -> float:
        return self.value_and_grad(omega)[0]


@dataclass
class OmegaFit:
    """The fitted ω and the ω-half losses it was chosen by (the same blocks for every entry)."""

    omega: np.ndarray
    loss: float                 # of the ensemble with the fitted ω
    start_loss: float           # of the ensemble with the ω the fit started from (the trained one)
    peer_losses: list[float]    # of each peer alone (the simplex's vertices)
    blocks: int
    tokens: int
    solver: str

    def as_dict(self) -> dict:
        return {"omega": self.omega.tolist(), "ensemble_loss": self.start_loss, "fitted_ensemble_loss": self.loss,
                "peer_losses": self.peer_losses, "blocks": self.blocks, "tokens": self.tokens, "solver": self.solver}


def collect_problem(models: Sequence[nn.Module], stream, block_size: int, batch_size: int = 8,
                    max_blocks: Optional[int] = None, *, memory: int = FIT_MEMORY, device=None,
                    autocast: Optional[Callable[[], ContextManager]] = None,
                    objective: Optional[Objective] = None, tokens_info: Optional[TokenInfo] = None
                    ) -> tuple[MixtureProblem, int]:
    """The peers' logits on the non-overlapping blocks of ``stream`` that :func:`~.heldout.block_starts`
    picks (the evaluation's own rule), kept on the CPU until ``memory`` bytes are used; returns the
    problem and the number of blocks it holds. Inputs and labels as :func:`~.heldout.heldout_losses`
    makes them (``objective``: masked positions for a masked model)."""
    starts = block_starts(len(stream), block_size, max_blocks)
    dev = model_device(models[0]) if device is None else resolve_device(device)
    chunks, targets, used, blocks = [], [], 0, 0
    attention = objective.eval_attention if objective is not None else None
    with evaluating(*models), attending(models, attention), torch.no_grad():
        for b in range(0, len(starts), batch_size):
            batch = starts[b:b + batch_size]
            block = torch.from_numpy(np.stack([np.asarray(stream[s:s + block_size + 1], dtype=np.int64) for s in batch]))
            x, y = (block[:, :-1], block[:, 1:]) if objective is None else block_batch(objective, block, batch, tokens_info)
            with (autocast() if autocast else contextlib.nullcontext()):
                zs = [peer_logits(m, x.to(dev)).float().cpu() for m in models]
            keep = y != IGNORE_INDEX
            z = torch.stack([zi[keep] for zi in zs], dim=1)          # (labelled positions, models, vocab)
            if chunks and used + z.numel() * 4 > memory:
                break
            chunks.append(z)
            targets.append(y[keep])
            used += z.numel() * 4
            blocks += len(batch)
    return MixtureProblem(chunks, targets), blocks


def solve(problem: MixtureProblem, start) -> tuple[np.ndarray, float, str]:
    """(ω, loss, solver) minimising ``problem`` on the simplex: SLSQP from ``start`` with the exact
    gradient; then the best of its answer, ``start`` and every vertex, so that rounding or an early
    stop of the solver can never leave the fit worse than the best peer or than ``start``."""
    from scipy.optimize import minimize

    m = problem.models
    start = normalised_weights(start, m).numpy()
    candidates = [(start, "start")] + [(np.eye(m)[i], f"vertex {i}") for i in range(m)]
    if m > 1:
        res = minimize(problem.value_and_grad, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                       options={"ftol": 1e-7, "maxiter": 50})   # float32 logits: a tighter ftol only spins
        w = np.clip(res.x, 0.0, None)
        w[w < 1e-9] = 0.0             # rounding dust (1e-17) on a vertex would make the same fit print differently
        if w.sum() > 0:
            candidates.insert(0, (w / w.sum(), "SLSQP"))
    scored = [(problem.value(w), i, w, name) for i, (w, name) in enumerate(candidates)]
    loss, _, omega, name = min(scored, key=lambda t: (t[0], t[1]))
    return omega, loss, name


def fit_omega(models: Sequence[nn.Module], stream, block_size: int, batch_size: int = 8,
              max_blocks: Optional[int] = None, *, start, memory: int = FIT_MEMORY, device=None,
              autocast: Optional[Callable[[], ContextManager]] = None, objective: Optional[Objective] = None,
              tokens_info: Optional[TokenInfo] = None) -> OmegaFit:
    """The ω minimising the ensemble's loss on ``stream`` (the ω half), with the losses of ``start``
    and of each peer alone on the same blocks (module docstring)."""
    problem, blocks = collect_problem(models, stream, block_size, batch_size, max_blocks, memory=memory,
                                      device=device, autocast=autocast, objective=objective, tokens_info=tokens_info)
    omega, loss, name = solve(problem, start)
    start_loss = problem.value(normalised_weights(start, len(models)).numpy())
    peers = [problem.value(np.eye(len(models))[i]) for i in range(len(models))]
    return OmegaFit(omega, loss, start_loss, peers, blocks, problem.positions, name)
