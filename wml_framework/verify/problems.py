"""Random float64 problems for ``wml verify``: peer logits for losses, linear peers for updaters.

All problems are small (a few tokens, a vocabulary of 5–11), cover M = 1 … 6 peers and are
reproducible from a seed. Two label layouts: ``dense`` ignores a quarter of the labels (causal LM
with some padding); ``masked`` scores about 15% of the positions, as BERT/RoBERTa masking does
(``MASK_RATE``), with a sequence that has no scored position at all, and for M in ``ONE_SCORED``
exactly one scored position in the whole batch (n = 1). The masked problems come from their own
random stream, so adding them changed none of the dense problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import config
from ..api import (
    IGNORE_INDEX,
    AdamPreconditioner,
    Batch,
    LossProblem,
    OuterContext,
    OuterProblem,
)

__all__ = ["PEER_COUNTS", "LOSS_VARIANTS", "OUTER_STEPS", "MASK_RATE", "ONE_SCORED", "MASKED", "MASKED_STREAM",
           "MASKED_OUTER_STEPS", "make_config",
           "LossCase", "simplex", "labels", "masked_labels", "loss_cases", "linear_peers", "OuterCase", "outer_case",
           "rel", "fd_error"]

PEER_COUNTS = (1, 2, 3, 4, 5, 6)
#: the settings verify tries every loss reference point at: T = 1 (the default) and two others
LOSS_VARIANTS = (
    dict(temperature=1.0, kd_temperature=1.0, loss_alpha=0.5, kd_alpha=0.5),
    dict(temperature=1.7, kd_temperature=2.5, loss_alpha=0.35, kd_alpha=0.6),
    dict(temperature=0.6, kd_temperature=0.8, loss_alpha=0.8, kd_alpha=0.3),
)
#: outer steps an updater's reference points are checked at (warm-up, cosine, floor)
OUTER_STEPS = (0, 1, 3, 12, 40)
#: … and on the masked-label problems (the step size does not depend on the labels: one step will do)
MASKED_OUTER_STEPS = (3,)
#: share of the positions a masked-label problem scores (BERT/RoBERTa: 15%)
MASK_RATE = 0.15
#: peer counts whose masked-label problems score exactly one position of the whole batch (n = 1)
ONE_SCORED = (1, 4)
#: what the name of every check run on masked-label problems ends with
MASKED = " [masked labels]"
#: offset of the masked problems' random stream from the dense problems' (the dense ones stay as they were)
MASKED_STREAM = 7919


def make_config(num_peers: int, **extra):
    """A valid config for a problem with ``num_peers`` peers (``extra`` wins)."""

    values = dict(num_peers=num_peers, loss_alpha=0.35, temperature=1.7, kd_alpha=0.6,
                  kd_temperature=2.5, fixed_omega=[float(k + 1) for k in range(num_peers)],
                  omega_warmup_iters=2, omega_decay_iters=20)
    values.update(extra)
    return config.from_dict(values, check_plugins=False)


@dataclass
class LossCase:
    """Torch tensors of one loss problem (float64)."""

    logits: list
    labels: Tensor
    omega: Tensor
    teacher: Tensor

    def as_problem(self, cfg, options: dict) -> LossProblem:
        return LossProblem([z.detach().numpy() for z in self.logits], self.labels.numpy(),
                           self.omega.detach().numpy(), self.teacher.numpy(), cfg, dict(options))


def simplex(M: int, g: torch.Generator) -> Tensor:
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    return w / w.sum()


def labels(shape: tuple, V: int, g: torch.Generator) -> Tensor:
    y = torch.randint(0, V, shape, generator=g)
    flat = y.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 4)]] = IGNORE_INDEX
    flat[0] = int(torch.randint(0, V, (1,), generator=g))   # never all ignored
    return y


def masked_labels(shape: tuple, V: int, g: torch.Generator, exactly_one: bool = False) -> Tensor:
    """Labels as masked-LM objectives make them: each position scored with probability ``MASK_RATE``,
    every other one ``IGNORE_INDEX``. In a (B, T) batch with B > 1 the first sequence is never scored
    (a row with nothing to predict). At least one position is scored; ``exactly_one``: exactly one."""
    y = torch.randint(0, V, shape, generator=g)
    allowed = torch.ones(shape, dtype=torch.bool)
    if len(shape) == 2 and shape[0] > 1:
        allowed[0] = False
    scored = (torch.rand(shape, generator=g) < MASK_RATE) & allowed
    if exactly_one or not bool(scored.any()):
        free = allowed.view(-1).nonzero().squeeze(-1)
        scored = torch.zeros(shape, dtype=torch.bool)
        scored.view(-1)[free[int(torch.randint(len(free), (1,), generator=g))]] = True
    y[~scored] = IGNORE_INDEX
    return y


def loss_cases(seed: int, masked: bool = False) -> Iterator[LossCase]:
    """One problem per M in PEER_COUNTS: (B, T) = (2, 3) with a quarter of the labels ignored, or with
    ``masked`` (B, T) = (3, 8) with masked-LM labels (``masked_labels``)."""
    if masked:
        g = torch.Generator().manual_seed(seed + MASKED_STREAM)
        for M in PEER_COUNTS:
            B, T, V = 3, 8, 5 + M
            logits = [2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64) for _ in range(M)]
            teacher = 2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
            yield LossCase(logits, masked_labels((B, T), V, g, M in ONE_SCORED), simplex(M, g), teacher)
        return
    g = torch.Generator().manual_seed(seed)
    for M in PEER_COUNTS:
        B, T, V = 2, 3, 5 + M
        logits = [2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64) for _ in range(M)]
        teacher = 2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
        yield LossCase(logits, labels((B, T), V, g), simplex(M, g), teacher)


def linear_peers(widths: Sequence[int], vocab: int, scale: float, g: torch.Generator) -> list:
    """Linear-softmax peers z_i = x_i W_i as bias-free float64 ``nn.Linear`` modules of different
    input widths: the peers for which ``wml_reference.hypergradient`` is exact."""
    peers = []
    for d in widths:
        lin = nn.Linear(d, vocab, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(scale * torch.randn(vocab, d, generator=g, dtype=torch.float64))
        peers.append(lin)
    return peers


@dataclass
class OuterCase:
    """An outer step on linear peers: the context handed to the updater, and its NumPy twin."""

    ctx: OuterContext
    x_train: list
    x_val: list

    def as_problem(self, cfg, options: dict) -> OuterProblem:
        c = self.ctx
        return OuterProblem([x.numpy() for x in self.x_train], c.train.labels.numpy(), [x.numpy() for x in self.x_val],
                            c.val.labels.numpy(), [p.weight.detach().numpy().T.copy() for p in c.peers],
                            c.omega.detach().numpy(), c.inner_lr, c.outer_step, cfg, dict(options),
                            preconditioner=[d[0].detach().numpy().T.copy() for d in c.preconditioner.diag])


def outer_case(M: int, loss, g: torch.Generator, outer_step: int = 3, masked: bool = False) -> OuterCase:
    """M linear peers z_i = x_i W_i (nn.Linear, no bias, different input widths), float64. With
    ``masked``, 24 training and 24 held-out tokens with masked-LM labels (``masked_labels``; exactly
    one scored token in each batch for M in ``ONE_SCORED``) instead of 7 and 6 with a quarter ignored."""
    n_train, n_val, V = (24, 24, 5) if masked else (7, 6, 5)
    widths = [2 + (k % 3) for k in range(M)]
    peers = linear_peers(widths, V, 0.8, g)
    x_train = [torch.randn(n_train, d, generator=g, dtype=torch.float64) for d in widths]
    x_val = [torch.randn(n_val, d, generator=g, dtype=torch.float64) for d in widths]
    # a preconditioner spread over two orders of magnitude, as Adam's is
    diag = [[torch.exp(torch.empty_like(p.weight).uniform_(-2.3, 2.3, generator=g))] for p in peers]
    omega = simplex(M, g)
    if masked:
        y_train, y_val = (masked_labels((n,), V, g, M in ONE_SCORED) for n in (n_train, n_val))
    else:
        y_train, y_val = labels((n_train,), V, g), labels((n_val,), V, g)
    ctx = OuterContext(peers=peers, loss=loss, omega=omega, train=Batch(x_train, y_train),
                       val=Batch(x_val, y_val), inner_lr=0.6, outer_step=outer_step,
                       preconditioner=AdamPreconditioner(diag))
    return OuterCase(ctx, x_train, x_val)


def rel(a, b, floor: float = 1e-6) -> float:
    """max |a − b| / max |b|; below ``floor`` the scale is ``floor`` (an exact 0 has no relative error)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} where {b.shape} was expected")
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, floor)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def fd_error(analytic: float, fd: float, floor: float = 1e-3) -> float:
    """Relative error of a directional derivative against central differences (floor: differences
    carry ~1e-11 of rounding, so derivatives that vanish are compared absolutely)."""
    return abs(analytic - fd) / max(abs(fd), abs(analytic), floor)
