"""How alike a run's peers are, and what their ensemble gains from them, on the evaluated half.

The WML paper credits the ensemble's gain to the peers' diversity; ``docs/results.md`` guessed that
peers learning from each other become alike. This measures both on the same fixed evaluation blocks
(and labelled positions) as :func:`~.heldout.heldout_losses`, in the same pass: the mean over peer
pairs and labelled positions of the Jensen–Shannon divergence between the peers' predictive
distributions (natural log: nats, in [0, ln 2]), and the ensemble's gain over its best peer
(best peer's held-out loss − the ensemble's; positive when the ensemble helps). Sums in float64;
one row of the batch at a time, so memory stays at block × vocabulary per peer.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..api import IGNORE_INDEX
from .heldout import heldout_losses

__all__ = ["js_divergence_rows", "PairwiseJS", "ensemble_gain", "diversity_record", "peer_diversity"]


def js_divergence_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """JS(P_t, Q_t) = ½ KL(P_t ‖ M_t) + ½ KL(Q_t ‖ M_t), M_t = ½(P_t + Q_t), of every row t of two
    log-probability tensors (..., V)."""
    p, q = log_p.exp(), log_q.exp()
    return _js_of(p, _entropy(p, log_p), q, _entropy(q, log_q))


def _entropy(p: Tensor, log_p: Tensor) -> Tensor:
    """H(P) = −Σ p log p per row; a probability of 0 adds 0 (no 0·log 0 NaN)."""
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def _js_of(p: Tensor, h_p: Tensor, q: Tensor, h_q: Tensor) -> Tensor:
    """JS as H(M) − ½ H(P) − ½ H(Q) (the same quantity): each model's entropy is computed once, so
    a pair costs one logarithm per entry, a quarter of the KL form's time. Exact in float64 to
    ~1e-14 nats; a rounding below 0 is clipped to 0."""
    m = 0.5 * (p + q)
    return (-torch.special.xlogy(m, m).sum(-1) - 0.5 * (h_p + h_q)).clamp_min(0.0)


class PairwiseJS:
    """Adds up, batch by batch, the JS divergence of every pair of ``num_models`` models over the
    labelled positions; pass it as ``heldout_losses(..., observe=)`` to measure in the scoring pass."""

    def __init__(self, num_models: int):
        self.pairs = [(i, j) for i in range(num_models) for j in range(i + 1, num_models)]
        self.sums = [0.0] * len(self.pairs)
        self.count = 0

    def __call__(self, logits: Sequence[Tensor], labels: Tensor) -> None:
        keep = labels != IGNORE_INDEX
        if self.pairs:
            for row in range(labels.shape[0]):        # one row at a time: float64 block × vocab per model
                parts = []
                for z in logits:
                    log_p = torch.log_softmax(z[row].to(keep.device)[keep[row]].double(), dim=-1)
                    p = log_p.exp()
                    parts.append((p, _entropy(p, log_p)))
                for k, (i, j) in enumerate(self.pairs):
                    self.sums[k] += float(_js_of(*parts[i], *parts[j]).sum())
        self.count += int(keep.sum())

    def totals(self, reduce_sum: Optional[Callable[[list], list]] = None) -> tuple[list[float], int]:
        """The per-pair sums and the labelled count, added over the processes by ``reduce_sum``."""
        values = [*self.sums, float(self.count)]
        if reduce_sum is not None:
            values = reduce_sum(values)
        return list(values[:-1]), int(values[-1])


def ensemble_gain(losses: Sequence[Optional[float]], ensemble: Optional[float]) -> Optional[float]:
    """Best (lowest) single-model loss − the ensemble's: > 0 when the ensemble beats every model;
    None when a loss is missing or not finite."""
    values = [*losses, ensemble]
    if not losses or any(v is None or not math.isfinite(v) for v in values):
        return None
    return min(losses) - ensemble


def diversity_record(js: PairwiseJS, losses: Sequence[Optional[float]], ensemble: Optional[float],
                     names: Sequence[str], reduce_sum: Optional[Callable[[list], list]] = None) -> dict:
    """What a run stores (``summary.json``'s ``diversity``): the mean pairwise JS, each pair's,
    the ensemble's gain over its best model (named), and the labelled positions they cover."""
    sums, count = js.totals(reduce_sum)          # one reduction: every process calls it once
    per_pair = [s / (count or 1) for s in sums]
    finite = [i for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
    best = min(finite, key=lambda i: losses[i]) if finite else None
    return {"js": sum(per_pair) / len(per_pair) if per_pair else None,
            "js_pairs": {f"{names[i]}|{names[j]}": v for (i, j), v in zip(js.pairs, per_pair)},
            "ensemble_gain": ensemble_gain(losses, ensemble), "best": None if best is None else names[best],
            "tokens": count, "unit": "nats"}


def peer_diversity(models: Sequence[nn.Module], tokens, block_size: int, batch_size: int = 8,
                   max_blocks: Optional[int] = None, *, omega=None, names: Optional[Sequence[str]] = None,
                   **scoring) -> dict:
    """:func:`~.heldout.heldout_losses` of ``models`` (``scoring``: its keyword options) with, from
    the same pass, their :func:`diversity_record` (``omega`` defaults to uniform)."""
    js = PairwiseJS(len(models))
    omega = [1.0] * len(models) if omega is None else omega
    out = heldout_losses(models, tokens, block_size, batch_size, max_blocks, omega=omega, observe=js, **scoring)
    names = list(names) if names is not None else [f"model_{i}" for i in range(len(models))]
    return {**out, "diversity": diversity_record(js, out["losses"], out["ensemble"], names, scoring.get("reduce_sum"))}
