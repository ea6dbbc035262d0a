"""The ``perplexity`` evaluator: held-out loss and perplexity on the evaluated half of the
corpus's held-out split (the half that never tuned ω), non-overlapping blocks, token mean."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["PerplexityEvaluator", "make_perplexity"]


class PerplexityEvaluator:
    """Scores every model on the same held-out tokens (tokenized once per tokenizer)."""

    def __init__(self, cfg, batch_size: int = 8, max_blocks: int | None = None, log=None):
        self.cfg, self.block_size = cfg, cfg.block_size
        self.batch_size, self.max_blocks = batch_size, max_blocks
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._streams: dict[str, Any] = {}

    def held_out(self, tokenizer):
        """The evaluated half of the held-out stream of the corpus under ``tokenizer``.

        Streams are cached under a fingerprint of the tokenizer's full definition, so peers and a
        teacher that share a vocabulary tokenize the corpus once, and a different tokenizer saved
        at the same path never reuses a stale stream."""
        from wml_framework.text.tokenizer import tokenizer_fingerprint
        from wml_framework.text.tokens import prepare_for

        key = tokenizer_fingerprint(tokenizer)
        if key not in self._streams:
            self._streams[key] = prepare_for(self.cfg, tokenizer=tokenizer, log=self.log).val_eval
        return self._streams[key]

    def __call__(self, model, tokenizer, *, device=None, progress=None, desc: str | None = None) -> dict:
        from wml_framework.evaluation.heldout import perplexity
        from wml_framework.evaluation.models import max_positions

        limit = max_positions(model)
        block = min(self.block_size, limit) if limit else self.block_size
        result = perplexity(model, self.held_out(tokenizer), block, self.batch_size, self.max_blocks,
                            device=device, progress=progress, desc=desc or "perplexity", tokenizer=tokenizer)
        result.update(corpus=self.cfg.corpus, val_fraction=self.cfg.val_fraction, split="held-out, evaluated half")
        return result

    def columns(self, result: dict) -> dict:
        """Next-token loss and perplexity; for a masked model, its masked-token loss (and no ppl:
        exp of a masked-token loss is not a perplexity)."""
        measure = result.get("measure", "next-token loss")
        if measure == "next-token loss":
            return {"held-out loss": f"{result['loss']:.4f}", "ppl": f"{result['ppl']:.2f}"}
        return {f"held-out {measure}": f"{result['loss']:.4f}"}


def make_perplexity(cfg, *, batch_size: int = 8, max_blocks: int = 0):
    """Held-out perplexity on the evaluated half of the corpus's held-out split."""
    from wml_framework.text.corpus import is_none

    if is_none(cfg.corpus):
        return None
    return PerplexityEvaluator(cfg, batch_size, max_blocks or None)
