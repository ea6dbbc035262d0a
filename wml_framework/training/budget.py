"""A budget ("2 epochs", "300k words") turned into optimizer steps, once the training text is known.

Why here and not in the configuration: an epoch or a word is a number of tokens only once the corpus
is tokenized. The runner calls :func:`resolve_run` right after the data is ready and trains with the
configuration it returns (``max_steps``, ``lr_decay_iters``, ``omega_decay_iters`` and the teacher's
``teacher_steps`` replaced); ``config.toml`` keeps the budget's text, and a resumed run resolves it
again with the same integer arithmetic, so it lands on the same steps.

Tokens per optimizer step are counted as the loop counts ``state.tokens``: ``batch_size ×
block_size × num_batches`` for the peers (``batch_size`` is the global batch: under torchrun every
rank trains a share of it, so there is no factor for the world size) and ``batch_size × block_size``
for the teacher (one micro-batch a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from ..config import WMLConfig
from ..runtime.budget_spec import PEERS, BudgetSpec, parse_budget

__all__ = ["Budget", "BudgetError", "budget_tokens", "scaled_batches", "peer_budget", "teacher_budget", "resolve_run"]


class BudgetError(ValueError):
    """A budget that cannot be resolved with this data (words asked for, words not counted)."""


@dataclass(frozen=True)
class Budget:
    """What a budget meant for one model: ``steps`` of ``tokens_per_step`` tokens, so ``tokens`` in all
    (``target_tokens`` asked for), about ``words`` words (None: not counted) and ``epochs`` passes."""

    spec: str
    steps: int
    tokens_per_step: int
    target_tokens: int
    train_tokens: int
    corpus_words: Optional[int]

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def words(self) -> Optional[int]:
        """The words ``tokens`` random blocks hold on average (the corpus's words per token)."""
        if self.corpus_words is None or self.train_tokens <= 0:
            return None
        return round(self.tokens * self.corpus_words / self.train_tokens)

    @property
    def epochs(self) -> float:
        return round(self.tokens / self.train_tokens, 4) if self.train_tokens > 0 else 0.0

    def as_dict(self) -> dict:
        return {"spec": self.spec, "steps": self.steps, "tokens": self.tokens, "words": self.words,
                "epochs": self.epochs, "target_tokens": self.target_tokens, "tokens_per_step": self.tokens_per_step}


def budget_tokens(spec: BudgetSpec, train_tokens: int, corpus_words: Optional[int]) -> int:
    """The tokens ``spec`` asks for, rounded up: epochs × training tokens, words × tokens per word."""
    if spec.unit == "tokens":
        return int(spec.amount)
    if spec.unit == "epochs":
        return math.ceil(spec.amount * train_tokens)
    if not corpus_words:
        raise BudgetError(f"budget {spec.text!r} counts words, but the training text's words are not counted; "
                          "give the budget in epochs or tokens")
    return math.ceil(spec.amount * Fraction(train_tokens, corpus_words))


def _fixed(steps: int, per_step: int, train_tokens: int, corpus_words: Optional[int]) -> Budget:
    return Budget("", steps, per_step, steps * per_step, train_tokens, corpus_words)


MAX_BATCHES = 10_000      # the config's bound on num_batches


def scaled_batches(cfg: WMLConfig, target_tokens: int) -> int:
    """``num_batches`` for ``budget_steps``: the budget spread over about that many steps (at least one
    micro-batch a step); ``cfg.num_batches`` itself when ``budget_steps`` is 0."""
    if not cfg.budget_steps:
        return cfg.num_batches
    micro = cfg.batch_size * cfg.block_size
    return min(MAX_BATCHES, max(1, round(target_tokens / (cfg.budget_steps * micro))))


def peer_budget(cfg: WMLConfig, train_tokens: int, corpus_words: Optional[int]) -> Budget:
    """The peers' budget: ``cfg.budget`` in steps (at least one), or ``max_steps`` when none is set.
    With ``budget_steps`` the step holds :func:`scaled_batches` micro-batches."""
    spec = parse_budget(cfg.budget)
    if spec is None:
        return _fixed(cfg.max_steps, cfg.batch_size * cfg.block_size * cfg.num_batches, train_tokens, corpus_words)
    target = budget_tokens(spec, train_tokens, corpus_words)
    per_step = cfg.batch_size * cfg.block_size * scaled_batches(cfg, target)
    return Budget(spec.text, max(1, math.ceil(target / per_step)), per_step, target, train_tokens, corpus_words)


def teacher_budget(cfg: WMLConfig, peers: Budget) -> Optional[Budget]:
    """The trained teacher's budget (None for a given teacher): ``teacher_budget`` in steps, or
    ``teacher_steps``. ``"peers"`` rounds down, so the teacher never reads more tokens than a peer."""
    if cfg.teacher:
        return None
    per_step = cfg.batch_size * cfg.block_size
    text = cfg.teacher_budget.strip()
    if text == PEERS:      # the tokens the peers' budget asks for: every peer reads at least as many
        return Budget(PEERS, max(1, peers.target_tokens // per_step), per_step, peers.target_tokens,
                      peers.train_tokens, peers.corpus_words)
    spec = parse_budget(text)
    if spec is None:
        return _fixed(cfg.teacher_steps, per_step, peers.train_tokens, peers.corpus_words)
    target = budget_tokens(spec, peers.train_tokens, peers.corpus_words)
    return Budget(spec.text, max(1, math.ceil(target / per_step)), per_step, target, peers.train_tokens,
                  peers.corpus_words)


def resolve_run(cfg: WMLConfig, train_tokens: int, corpus_words: Optional[int]
                ) -> tuple[WMLConfig, Budget, Optional[Budget]]:
    """The configuration to train with, and the peers' and the teacher's budgets. Without a budget the
    configuration comes back unchanged; with one, its steps replace ``max_steps`` and both decays
    (``lr_decay_iters`` = steps, ``omega_decay_iters`` = ⌈steps / outer_every⌉), ``budget_steps``
    rescales ``num_batches``, and the teacher's steps replace ``teacher_steps``."""
    peers = peer_budget(cfg, train_tokens, corpus_words)
    teacher = teacher_budget(cfg, peers)
    changes = {}
    if peers.spec:
        changes.update(max_steps=peers.steps, lr_decay_iters=peers.steps,
                       omega_decay_iters=math.ceil(peers.steps / cfg.outer_every))
        if cfg.budget_steps:
            changes["num_batches"] = scaled_batches(cfg, peers.target_tokens)
    if teacher is not None and teacher.spec:
        changes["teacher_steps"] = teacher.steps
    return (cfg.replace(**changes) if changes else cfg), peers, teacher
