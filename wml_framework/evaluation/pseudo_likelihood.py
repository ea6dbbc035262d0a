"""Sentence scores of masked and hybrid models: pseudo-log-likelihood (``mlm``) and masked next-token
prediction (``mntp``), as the BabyLM 2025 pipeline's backends of those names compute them.

Why a module of its own: a masked LM gives no probability of a whole sentence, so the field scores it
by masking each token in turn and summing the log-probability of the true token at the mask
(pseudo-log-likelihood, Salazar et al. 2020: ``mlm``); a hybrid model trained by masked next-token
prediction (GPT-BERT) reads that prediction one position earlier (``mntp``). Which tokens count, how
the sentence is encoded and where each prediction is read decide the numbers, so they follow the
pipeline exactly (``sentence_zero_shot/dataset.py``, ``process_mlm_sentences`` /
``process_mntp_sentences``; ``compute_results.py``, ``compute_mlm_results``):

* the sentence is encoded by the tokenizer as it stands, its post-processor adding its own special
  tokens (``<s> … </s>``, ``[CLS] … [SEP]``, wml's BOS); those are context, never scored;
* the scored tokens are those whose character span ends inside the sentence (offset end > 0): every
  token of the text, none of the special tokens;
* ``mlm``: one copy of the sentence per scored token, that token replaced by the mask token, the
  log-probability of the true token read at the masked position;
* ``mntp``: the same copies, the log-probability read at the position before the mask; a token with
  no position before it (the first, when the tokenizer adds no cls/bos) is not scored;
* padding is masked out of attention and the model attends both ways (a masked LM's own attention;
  a causal-LM class is given a bidirectional mask, :func:`~.models.logits_attending`).

Copies from many sentences go through the model together (``batch_size`` copies a forward), longest
sentences first; the per-token log-probabilities are summed in float64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..api import BIDIRECTIONAL, native_attention
from ..runtime.progress import progress_bar
from ..text.tokenizer import pad_token_id
from .models import (
    EnsembleLM,
    evaluating,
    logits_attending,
    max_positions,
    model_device,
    resolve_device,
)

__all__ = ["SCORINGS", "CONFIG_ATTR", "scoring_kind", "masked_targets", "masked_logprobs", "pseudo_logprobs"]

#: the ways a sentence can be scored: next-token log-probabilities, pseudo-log-likelihood, masked next-token
SCORINGS = ("causal", "mlm", "mntp")
#: the config attribute an exported model's objective declares its scoring in
CONFIG_ATTR = "wml_objective_scoring"


def scoring_kind(model: nn.Module, scoring: str | None = None) -> str:
    """How ``model``'s sentences are scored: ``scoring`` when given ("causal", "mlm", "mntp"; None or
    "auto": decide from the model), else what its config declares (``wml_objective_scoring``, which the
    trainer writes into exported configs), else "mlm" for a masked LM (one that attends both ways by
    itself), else "causal". An ensemble is scored as its members are, and they must agree."""
    if scoring is not None and scoring != "auto":
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)} (or 'auto'), not {scoring!r}")
        return scoring
    if isinstance(model, EnsembleLM):
        kinds = [scoring_kind(m) for m in model.models]
        if len(set(kinds)) > 1:
            raise ValueError(f"the ensemble's members are scored differently ({', '.join(kinds)}); "
                             "say how to score it (scoring='causal', 'mlm' or 'mntp')")
        return kinds[0]
    declared = getattr(getattr(model, "config", None), CONFIG_ATTR, None)
    if declared is not None:
        if declared not in SCORINGS:
            raise ValueError(f"the model's config says {CONFIG_ATTR}={declared!r}; expected one of {', '.join(SCORINGS)}")
        return declared
    return "mlm" if native_attention(model) == BIDIRECTIONAL else "causal"


def masked_targets(tokenizer, sentences: Sequence[str], kind: str) -> list[tuple[list[int], list[int]]]:
    """Each sentence's token ids (the tokenizer's special tokens included) and the positions scored,
    chosen as the BabyLM pipeline chooses them: tokens whose offset ends after character 0 (the
    sentence's own tokens); for ``mntp`` never position 0, which has no position before it. A slow
    tokenizer (no offsets) scores every token that is not special."""
    if kind not in ("mlm", "mntp"):
        raise ValueError(f"masked scoring is 'mlm' or 'mntp', not {kind!r}")
    texts = list(sentences)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, return_offsets_mapping=True)
        keep = [[end > 0 for _, end in offsets] for offsets in enc["offset_mapping"]]
    else:
        enc = tokenizer(texts, return_special_tokens_mask=True)
        keep = [[not s for s in special] for special in enc["special_tokens_mask"]]
    out = []
    for ids, flags in zip(enc["input_ids"], keep):
        # the pipeline skips position 0 for mntp only when the tokenizer has no cls/bos; with one it
        # assumes position 0 holds it. Where it does not, the pipeline reads index -1 (the last
        # column of its padded batch); wml skips that token instead (wml's tokenizers add their BOS)
        positions = [i for i, k in enumerate(flags) if k and (kind == "mlm" or i > 0)]
        out.append((list(ids), positions))
    return out


def masked_logprobs(model: nn.Module, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], *,
                    kind: str, mask_id: int, pad_id: int = 0, batch_size: int = 64,
                    device: str | torch.device | None = None, progress: bool | None = False,
                    desc: str = "scoring") -> np.ndarray:
    """Σ over ``positions[k]`` p of log P(x_p | sequence k with x_p masked), read at p (``mlm``) or at
    p − 1 (``mntp``), for each token sequence k; float64, in the caller's order.

    Every (sequence, position) is one masked copy; ``batch_size`` copies go through the model per
    forward, right-padded with an attention mask, longest sequences first (a batch that does not fit
    fails at once). The model attends both ways (:func:`~.models.logits_attending`)."""
    if kind not in ("mlm", "mntp"):
        raise ValueError(f"masked scoring is 'mlm' or 'mntp', not {kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if len(positions) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(positions)} lists of positions")
    out = np.zeros(len(sequences), dtype=np.float64)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    shift = 1 if kind == "mntp" else 0
    jobs = [(k, p) for k, ps in enumerate(positions) for p in ps]
    for k, p in jobs:
        if not shift <= p < lengths[k]:
            raise ValueError(f"position {p} cannot be scored by {kind} in a sequence of {lengths[k]} tokens")
    if not jobs:
        return out
    limit = max_positions(model)
    if limit is not None and lengths.max() > limit:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens exceeds the model's {limit} positions")
    dev = model_device(model) if device is None else resolve_device(device)
    # every sequence once, padded to the longest; a batch of copies is rows of this, then one mask each
    table = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    valid = torch.zeros_like(table)
    for k, seq in enumerate(sequences):
        table[k, :lengths[k]] = torch.as_tensor(list(seq), dtype=torch.long)
        valid[k, :lengths[k]] = 1
    job_seq = np.array([k for k, _ in jobs], dtype=np.int64)
    job_pos = np.array([p for _, p in jobs], dtype=np.int64)
    order = np.argsort(-lengths[job_seq], kind="stable")
    with evaluating(model), progress_bar(len(jobs), desc, progress, unit="copy") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seq_idx, pos = torch.as_tensor(job_seq[idx]), torch.as_tensor(job_pos[idx])
            width = int(lengths[job_seq[idx]].max())
            ids = table[seq_idx, :width].clone()
            rows = torch.arange(len(idx))
            targets = ids[rows, pos].clone()
            ids[rows, pos] = mask_id
            mask = valid[seq_idx, :width]
            ids, mask = ids.to(dev), mask.to(dev)
            logits = logits_attending(model, ids, mask, BIDIRECTIONAL)
            z = logits[rows.to(logits.device), (pos - shift).to(logits.device)]      # (B, V)
            if z.dtype in (torch.float16, torch.bfloat16):
                z = z.float()
            token_lp = z.gather(-1, targets.to(z.device).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
            np.add.at(out, job_seq[idx], token_lp.double().cpu().numpy())
            bar.update(len(idx))
    return out


def pseudo_logprobs(model: nn.Module, tokenizer, sentences: Sequence[str], *, kind: str = "mlm",
                    batch_size: int = 64, device: str | torch.device | None = None,
                    progress: bool | None = False, desc: str = "scoring") -> np.ndarray:
    """The ``mlm`` (pseudo-log-likelihood) or ``mntp`` score of each sentence, float64: the BabyLM
    pipeline's encoding and tokens (:func:`masked_targets`), batched masked copies (:func:`masked_logprobs`)."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(f"scoring {kind!r} masks tokens, but the tokenizer has no mask token")
    encoded = masked_targets(tokenizer, sentences, kind)
    return masked_logprobs(model, [ids for ids, _ in encoded], [ps for _, ps in encoded], kind=kind,
                           mask_id=int(mask_id), pad_id=pad_token_id(tokenizer), batch_size=batch_size,
                           device=device, progress=progress, desc=desc)
