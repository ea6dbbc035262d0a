"""Random float64 problems for ``wml verify``: peer logits for losses, linear peers for updaters.

All problems are small (a few tokens, a vocabulary of 5–11), cover M = 1 … 6 peers, ignore a
quarter of the labels, and are reproducible from a seed.
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

__all__ = ["PEER_COUNTS", "LOSS_VARIANTS", "OUTER_STEPS", "make_config", "LossCase", "simplex", "labels",
           "loss_cases", "linear_peers", "OuterCase", "outer_case", "rel", "fd_error"]

PEER_COUNTS = (1, 2, 3, 4, 5, 6)
#: the settings verify tries every loss reference point at: T = 1 (the default) and two others
LOSS_VARIANTS = (
    dict(temperature=1.0, kd_temperature=1.0, loss_alpha=0.5, kd_alpha=0.5),
    dict(temperature=1.7, kd_temperature=2.5, loss_alpha=0.35, kd_alpha=0.6),
    dict(temperature=0.6, kd_temperature=0.8, loss_alpha=0.8, kd_alpha=0.3),
)
#: outer steps an updater's reference points are checked at (warm-up, cosine, floor)
OUTER_STEPS = (0, 1, 3, 12, 40)


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


def loss_cases(seed: int) -> Iterator[LossCase]:
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


def outer_case(M: int, loss, g: torch.Generator, outer_step: int = 3) -> OuterCase:
    """M linear peers z_i = x_i W_i (nn.Linear, no bias, different input widths), float64."""
    n_train, n_val, V = 7, 6, 5
    widths = [2 + (k % 3) for k in range(M)]
    peers = linear_peers(widths, V, 0.8, g)
    x_train = [torch.randn(n_train, d, generator=g, dtype=torch.float64) for d in widths]
    x_val = [torch.randn(n_val, d, generator=g, dtype=torch.float64) for d in widths]
    # a preconditioner spread over two orders of magnitude, as Adam's is
    diag = [[torch.exp(torch.empty_like(p.weight).uniform_(-2.3, 2.3, generator=g))] for p in peers]
    ctx = OuterContext(peers=peers, loss=loss, omega=simplex(M, g), train=Batch(x_train, labels((n_train,), V, g)),
                       val=Batch(x_val, labels((n_val,), V, g)), inner_lr=0.6, outer_step=outer_step,
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
