"""Built-in objectives: how a block of tokens becomes inputs and labels.

- ``causal``: next-token prediction (inputs are the block's first T tokens, labels the last T).
- ``masked``: BERT/RoBERTa masked-language modelling (Devlin et al., 2019; Liu et al., 2019): a share
  of the positions is chosen (15%), of those 80% become the mask token, 10% a random token, 10% stay;
  labels only at the chosen positions.
- ``hybrid``: GPT-BERT (Charpentier & Samuel, 2024): one model, some steps causal (causal attention,
  next-token labels), the rest masked next-token prediction (bidirectional attention, masked inputs,
  each masked token predicted from the position before it). Its models are scored by the BabyLM
  2025 pipeline's ``mntp`` backend.

The losses, the ensemble, the hypergradient and mirror descent score only labelled positions, so
none of them changes with the objective (``wml verify`` checks them with masked labels too).
"""

from __future__ import annotations

import math

import torch

from wml_framework import hookimpl
from wml_framework.api import BIDIRECTIONAL, CAUSAL, IGNORE_INDEX, Option, TokenInfo

__all__ = ["CausalObjective", "MaskedObjective", "HybridObjective", "masking", "wml_register_objectives"]


class CausalObjective:
    """Next-token prediction: the causal shift the trainer always used (draws no random numbers)."""

    head, needs_mask_token, scoring = "causal", False, "causal"
    attentions, eval_attention, loss_name = (CAUSAL,), CAUSAL, "next-token loss"

    def attention(self, step: int) -> str:
        return CAUSAL

    def batch(self, block, step, gen, tokens: TokenInfo):
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()


def masking(x: torch.Tensor, gen: torch.Generator, tokens: TokenInfo, probability: float, mask_share: float,
            random_share: float, allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ``x`` (B, T): ``(corrupted inputs, chosen positions)``. Each position
    that is not a special token (and, if given, where ``allowed``) is chosen with ``probability``;
    a chosen one becomes the mask token with ``mask_share``, a random non-special token with
    ``random_share``, else stays. Always draws the same amount of random numbers for a shape, so
    that a resumed run repeats every choice."""
    if tokens.mask_token_id is None:
        raise ValueError("masking needs a tokenizer with a mask token")
    if tokens.vocab_size <= len(tokens.special_ids):
        raise ValueError(f"masking needs the vocabulary size to draw random tokens from; got "
                         f"TokenInfo(vocab_size={tokens.vocab_size}) (TokenInfo.of(tokenizer, vocab_size))")
    special = torch.tensor(tokens.special_ids, dtype=x.dtype)
    ordinary = torch.ones(tokens.vocab_size, dtype=torch.bool)
    ordinary[special[special < tokens.vocab_size]] = False
    replacements = ordinary.nonzero().squeeze(-1)
    # drawn on the generator's device (the CPU), then moved: the same draws whatever device x is on
    choose = torch.rand(x.shape, generator=gen).to(x.device)
    how = torch.rand(x.shape, generator=gen).to(x.device)
    pick = torch.randint(len(replacements), x.shape, generator=gen).to(x.device)
    replacements = replacements.to(x.device)
    chosen = (choose < probability) & ~torch.isin(x, special.to(x.device))
    if allowed is not None:
        chosen &= allowed
    out = x.clone()
    out[chosen & (how < mask_share)] = tokens.mask_token_id
    swap = chosen & (how >= mask_share) & (how < mask_share + random_share)
    out[swap] = replacements[pick[swap]].to(x.dtype)
    return out, chosen


def _check_shares(who: str, probability: float, mask_share: float, random_share: float) -> None:
    if not 0.0 < probability < 1.0:
        raise ValueError(f"{who}: mask_probability must be in (0, 1), got {probability}")
    if mask_share < 0 or random_share < 0 or mask_share + random_share > 1.0 + 1e-12:
        raise ValueError(f"{who}: mask_token_share ({mask_share}) and random_token_share ({random_share}) must be "
                         "non-negative and sum to at most 1 (the rest of the chosen tokens stay as they are)")


class MaskedObjective:
    """Masked-language modelling (BERT, RoBERTa): labels only where a token was chosen."""

    head, needs_mask_token, scoring = "masked", True, "mlm"
    attentions, eval_attention, loss_name = (BIDIRECTIONAL,), BIDIRECTIONAL, "masked-token loss"

    def __init__(self, mask_probability: float = 0.15, mask_token_share: float = 0.8, random_token_share: float = 0.1):
        _check_shares("masked", mask_probability, mask_token_share, random_token_share)
        self.probability, self.mask_share, self.random_share = mask_probability, mask_token_share, random_token_share

    def attention(self, step: int) -> str:
        return BIDIRECTIONAL

    def batch(self, block, step, gen, tokens: TokenInfo):
        x = block[:, :-1]
        inputs, chosen = masking(x, gen, tokens, self.probability, self.mask_share, self.random_share)
        return inputs, torch.where(chosen, x, torch.full_like(x, IGNORE_INDEX))


#: the golden ratio's fractional part: the most evenly spread of the Weyl sequences frac(n·α)
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class HybridObjective:
    """GPT-BERT: a ``causal_share`` of the steps causal, the others masked next-token prediction."""

    head, needs_mask_token, scoring = "masked", True, "mntp"
    attentions, eval_attention, loss_name = (CAUSAL, BIDIRECTIONAL), CAUSAL, "next-token loss"

    def __init__(self, causal_share: float = 0.5, mask_probability: float = 0.15, mask_token_share: float = 0.8,
                 random_token_share: float = 0.1):
        if not 0.0 <= causal_share <= 1.0:
            raise ValueError(f"hybrid: causal_share must be in [0, 1], got {causal_share}")
        _check_shares("hybrid", mask_probability, mask_token_share, random_token_share)
        self.causal_share = causal_share
        self.probability, self.mask_share, self.random_share = mask_probability, mask_token_share, random_token_share

    def attention(self, step: int) -> str:
        """Causal where the golden-ratio sequence frac((s+1)·0.618…) falls below ``causal_share``: no
        random draw (a resume agrees), within a few steps of the share over any stretch, and, since
        the sequence is equidistributed along every arithmetic progression of steps, the outer steps
        (every ``outer_every``-th) see both attentions in the same shares. An alternating schedule
        would put every outer step on the same attention whenever 1/share divides outer_every."""
        if step < 0:
            return self.eval_attention
        return CAUSAL if ((step + 1) * GOLDEN) % 1.0 < self.causal_share else BIDIRECTIONAL

    def batch(self, block, step, gen, tokens: TokenInfo):
        if self.attention(step) == CAUSAL:
            return block[:, :-1].contiguous(), block[:, 1:].contiguous()
        x = block[:, :-1]
        allowed = torch.ones_like(x, dtype=torch.bool)
        allowed[:, 0] = False                      # nothing before it to predict it from
        inputs, chosen = masking(x, gen, tokens, self.probability, self.mask_share, self.random_share, allowed)
        # position j predicts token j+1 where that token was masked (masked next-token prediction)
        labels = torch.full_like(x, IGNORE_INDEX)
        labels[:, :-1] = torch.where(chosen[:, 1:], x[:, 1:], torch.full_like(x[:, 1:], IGNORE_INDEX))
        return inputs, labels


_SHARES = [
    Option("mask_probability", 0.15, "Share of the (non-special) tokens chosen for prediction.", low=0.0, high=1.0,
           low_open=True, high_open=True),
    Option("mask_token_share", 0.8, "Share of the chosen tokens replaced by the mask token.", low=0.0, high=1.0),
    Option("random_token_share", 0.1, "Share of the chosen tokens replaced by a random token (the rest stay).",
           low=0.0, high=1.0),
]


def make_causal(cfg) -> CausalObjective:
    """Next-token prediction (causal LMs: GPT-2, LLaMA, …)."""
    return CausalObjective()


def make_masked(cfg, mask_probability=0.15, mask_token_share=0.8, random_token_share=0.1) -> MaskedObjective:
    """BERT/RoBERTa masked-language modelling."""
    return MaskedObjective(mask_probability, mask_token_share, random_token_share)


def make_hybrid(cfg, causal_share=0.5, mask_probability=0.15, mask_token_share=0.8,
                random_token_share=0.1) -> HybridObjective:
    """GPT-BERT: causal steps and masked next-token steps in one model."""
    return HybridObjective(causal_share, mask_probability, mask_token_share, random_token_share)


@hookimpl
def wml_register_objectives(register):
    register("causal", make_causal, help="Next-token prediction (causal LMs); scored by summed next-token log-probabilities.")
    register("masked", make_masked, options=_SHARES,
             help="BERT/RoBERTa masking (15%: 80% mask token, 10% random, 10% kept); masked LMs; scored by pseudo-log-likelihood.")
    register("hybrid", make_hybrid,
             options=[Option("causal_share", 0.5, "Share of the optimizer steps that are causal (the rest masked "
                                                  "next-token prediction).", low=0.0, high=1.0), *_SHARES],
             help="GPT-BERT: causal and masked-next-token steps in one masked LM; scored as the BabyLM pipeline's mntp.")
