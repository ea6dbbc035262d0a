"""Held-out loss and perplexity: token-mean cross-entropy over non-overlapping blocks.

One pass scores several models and, given ω, their logit ensemble from the same logits (the
ensemble costs no extra forward). The trainer's periodic evaluation, ``wml eval`` and the
perplexity evaluator all call :func:`heldout_losses`, so their numbers agree by construction.
The objective (a plugin) makes each block's inputs and labels: the causal shift, or a masking
drawn from a generator seeded by the block's start, so that every evaluation of a masked model
scores the same positions whatever the batch size or the number of processes; the mean is over
the positions it labels (a masked model's "perplexity" is its masked-token loss, so labelled).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..api import (
    IGNORE_INDEX,
    Objective,
    TokenInfo,
    attending,
    native_attention,
    peer_logits,
)
from ..plugin_system.host import PluginHost, get_host
from ..runtime.distributed import current
from ..runtime.progress import progress_bar
from .models import (
    EnsembleLM,
    evaluating,
    max_positions,
    mix_logits,
    model_device,
    normalised_weights,
    resolve_device,
)

__all__ = ["OBJECTIVE_ATTR", "OBJECTIVE_OPTIONS_ATTR", "block_starts", "objective_for", "block_batch",
           "heldout_losses", "perplexity"]

#: the config attributes an exported model carries: the objective it was trained with, and its options
OBJECTIVE_ATTR, OBJECTIVE_OPTIONS_ATTR = "wml_objective", "wml_objective_options"


def objective_for(model: nn.Module, host: Optional[PluginHost] = None) -> tuple[str, Objective]:
    """``(name, objective)`` a model was trained with: the one its config names (every wml export
    does), else ``masked`` for a masked LM and ``causal`` for anything else (a folder from elsewhere)."""
    member = model.models[0] if isinstance(model, EnsembleLM) else model
    config = getattr(member, "config", None)
    name = getattr(config, OBJECTIVE_ATTR, None)
    options = dict(getattr(config, OBJECTIVE_OPTIONS_ATTR, None) or {})
    if not name:
        name = "masked" if native_attention(member) == "bidirectional" else "causal"
    host = host or get_host()
    if name not in host.names("objective"):
        raise ValueError(f"the model was trained with objective {name!r}, which no loaded plugin registers "
                         f"(objectives: {', '.join(host.names('objective')) or 'none'}){host.failure_note('objective', name)}")
    from ..config import WMLConfig

    return name, host.create("objective", name, WMLConfig(), options=options)


def block_batch(objective: Objective, rows: torch.Tensor, starts: Sequence[int], tokens: TokenInfo):
    """Held-out inputs and labels of ``rows`` (blocks of block_size+1 tokens beginning at ``starts``):
    each row's random choices from a generator seeded by its start (the same in every evaluation)."""
    xs, ys = [], []
    for row, start in zip(rows, starts):
        x, y = objective.batch(row[None], -1, torch.Generator().manual_seed(int(start) + 1), tokens)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def block_starts(n_tokens: int, block_size: int, max_blocks: Optional[int] = None) -> np.ndarray:
    """Starts of the non-overlapping blocks of a stream (block k predicts tokens k·B+1 … k·B+B);
    with ``max_blocks``, that many spread evenly over the stream, deterministically."""
    n_blocks = (n_tokens - 1) // block_size
    if n_blocks < 1:
        raise ValueError(f"{n_tokens} held-out tokens are fewer than block_size+1 = {block_size + 1}")
    starts = np.arange(n_blocks) * block_size
    if max_blocks is not None and max_blocks < n_blocks:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be ≥ 1, got {max_blocks}")
        starts = starts[np.unique(np.linspace(0, n_blocks - 1, max_blocks).round().astype(int))]
    return starts


def heldout_losses(models: Sequence[nn.Module], tokens, block_size: int, batch_size: int = 8,
                   max_blocks: Optional[int] = None, *, omega=None, device=None, progress: Optional[bool] = False,
                   desc: str = "held-out loss", autocast: Optional[Callable[[], ContextManager]] = None,
                   shard: tuple[int, int] = (0, 1),
                   reduce_sum: Optional[Callable[[list], list]] = None,
                   objective: Optional[Objective] = None, tokens_info: Optional[TokenInfo] = None,
                   observe: Optional[Callable[[list, torch.Tensor], None]] = None) -> dict:
    """Mean loss over labelled positions of each model (and of their ω-ensemble when ``omega`` is
    given): next-token loss by default; ``objective`` (with the tokenizer's ``tokens_info``) makes
    the inputs and labels otherwise (masked-token loss for ``masked``), attending as it evaluates.

    Returns ``{"losses": [per model], "ensemble": float | None, "tokens", "blocks", "block_size"}``;
    sums are kept in float64. ``autocast`` (a context-manager factory) wraps the forwards.
    ``shard=(k, n)`` scores every n-th block from the k-th, and ``reduce_sum`` adds the sums of
    the n shards (processes of a data-parallel run), so every process returns the full result.
    ``observe(logits, labels)`` sees every batch's float logits (one tensor per model) and labels,
    so a further measure (:mod:`.diversity`) costs no forward of its own."""
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be ≥ 1, got {block_size} and {batch_size}")
    for m in models:
        limit = max_positions(m)
        if limit is not None and block_size > limit:
            raise ValueError(f"block_size {block_size} exceeds the model's {limit} positions")
    stream = tokens
    all_starts = block_starts(len(stream), block_size, max_blocks)
    starts = all_starts[shard[0]::shard[1]]
    weights = normalised_weights(omega, len(models)) if omega is not None else None
    dev = model_device(models[0]) if device is None else resolve_device(device)
    sums, ens_sum, count = [0.0] * len(models), 0.0, 0
    attention = objective.eval_attention if objective is not None else None
    with evaluating(*models), attending(models, attention), progress_bar(len(starts), desc, progress, unit="block") as bar:
        for b in range(0, len(starts), batch_size):
            rows = np.stack([np.asarray(stream[s:s + block_size + 1], dtype=np.int64) for s in starts[b:b + batch_size]])
            block = torch.from_numpy(rows)
            if objective is None:
                x, y = block[:, :-1], block[:, 1:]
            else:
                x, y = block_batch(objective, block, starts[b:b + batch_size], tokens_info)
            x, y = x.to(dev), y.to(dev)
            with (autocast() if autocast else contextlib.nullcontext()):
                zs = [peer_logits(m, x).float() for m in models]
            for k, z in enumerate(zs):
                sums[k] += _nll_sum(z, y)
            if observe is not None:
                observe(zs, y)
            if weights is not None:
                ens_sum += _nll_sum(mix_logits(zs, weights.to(dev)), y)
            count += int((y != IGNORE_INDEX).sum())
            bar.update(len(rows))
    if reduce_sum is not None:
        *sums, ens_sum, count = reduce_sum([*sums, ens_sum, float(count)])
    count = count or 1           # nothing labelled (an all-special stream): every loss is 0, not NaN
    return {"losses": [s / count for s in sums], "ensemble": ens_sum / count if weights is not None else None,
            "tokens": int(count), "blocks": int(len(all_starts)), "block_size": block_size}


def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood over the labelled positions (``IGNORE_INDEX`` skipped)."""
    keep = targets != IGNORE_INDEX
    if not bool(keep.all()):
        logits, targets = logits[keep], targets[keep]
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(nll.double().sum())


def perplexity(model: nn.Module, tokens: Sequence[int] | np.ndarray, block_size: int, batch_size: int = 8,
               max_blocks: int | None = None, *, device=None, progress: bool | None = False,
               desc: str = "perplexity", tokenizer=None) -> dict:
    """One model's held-out loss and ppl = exp(loss) over non-overlapping blocks of ``tokens``
    (in a data-parallel run each process scores its share of the blocks; all get the total).
    The loss is that of the objective the model was trained with (:func:`objective_for`; a
    masked objective needs the model's ``tokenizer`` for its mask token); ``measure`` names it."""

    dist = current()
    name, objective = objective_for(model)
    info = None
    if name != "causal" or objective.needs_mask_token:
        if tokenizer is None:
            raise ValueError(f"scoring a model of objective {name!r} needs its tokenizer")
        info = TokenInfo.of(tokenizer)
    out = heldout_losses([model], np.asarray(tokens), block_size, batch_size, max_blocks, device=device,
                         progress=progress, desc=desc, shard=(dist.rank, dist.world), reduce_sum=dist.sum_floats,
                         objective=objective, tokens_info=info)
    loss = out["losses"][0]
    return {"loss": loss, "ppl": math.exp(loss) if loss < 700 else float("inf"), "tokens": out["tokens"],
            "blocks": out["blocks"], "block_size": block_size, "objective": name, "measure": objective.loss_name}
