"""Built-in evaluators: held-out ``perplexity`` and ``minimal_pairs`` accuracy (BLiMP format).

An evaluator factory takes a :class:`~wml_framework.config.WMLConfig` (plus keyword
options) and returns a callable ``evaluator(model, tokenizer, *, device=None,
progress=None, desc=None) -> dict`` that scores one Hugging Face causal LM or an
:class:`~wml_framework.scoring.EnsembleLM`. The scoring itself lives in
:mod:`wml_framework.scoring`, so every caller computes the numbers the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from wml_framework import hookimpl

# torch-heavy modules (wml_framework.scoring, wml_framework.data) are imported where they are
# used, so that listing plugins stays fast.
SKIP = ("", "none")


def blimp_source(spec: str | None) -> Path | None:
    """Minimal-pair folder or file named by a ``blimp`` setting: 'default' is the sample
    shipped in the package, '' or 'none' means no minimal-pair evaluation."""
    if spec is None or str(spec).strip().lower() in SKIP:
        return None
    if str(spec) == "default":
        from wml_framework.data import default_blimp_dir

        return default_blimp_dir()
    return Path(spec).expanduser()


class PerplexityEvaluator:
    """Held-out perplexity: the corpus's held-out split (``data.prepare`` with the model's
    own tokenizer), non-overlapping blocks, token-mean loss."""

    name = "perplexity"

    def __init__(self, corpus: str = "default", val_fraction: float = 0.05, block_size: int = 128,
                 batch_size: int = 8, max_blocks: int | None = None, log=None):
        self.corpus, self.val_fraction = corpus, val_fraction
        self.block_size, self.batch_size, self.max_blocks = block_size, batch_size, max_blocks
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._streams: dict[int, Any] = {}

    @classmethod
    def from_config(cls, cfg, *, batch_size: int = 8, max_blocks: int | None = None, log=None) -> "PerplexityEvaluator":
        return cls(cfg.corpus, cfg.val_fraction, cfg.block_size, batch_size, max_blocks, log)

    def held_out(self, tokenizer):
        """Held-out token stream of the corpus under ``tokenizer``.

        Streams are cached under a fingerprint of the tokenizer's full definition, so peers
        and a teacher that share a vocabulary tokenize the corpus once, and a different
        tokenizer saved at the same path never reuses a stale stream."""
        from wml_framework.data import prepare, tokenizer_fingerprint

        key = tokenizer_fingerprint(tokenizer)
        if key not in self._streams:
            data = prepare(self.corpus, len(tokenizer), self.val_fraction, tokenizer=tokenizer, log=self.log)
            self._streams[key] = data.val
        return self._streams[key]

    def __call__(self, model, tokenizer, *, device=None, progress=None, desc: str | None = None) -> dict:
        from wml_framework import scoring

        limit = scoring.max_positions(model)
        block = min(self.block_size, limit) if limit else self.block_size
        result = scoring.perplexity(model, self.held_out(tokenizer), block, self.batch_size, self.max_blocks,
                                    device=device, progress=progress, desc=desc or "perplexity")
        result["corpus"] = self.corpus
        result["val_fraction"] = self.val_fraction
        return result


class MinimalPairsEvaluator:
    """Minimal-pair accuracy on a folder of BLiMP-style ``.jsonl`` files (per file, per UID,
    macro average); the pairs are read once and reused for every model."""

    name = "minimal_pairs"

    def __init__(self, source: str | Path = "default", limit: int | None = None, batch_size: int = 64):
        path = blimp_source(str(source))
        if path is None:
            raise ValueError(f"no minimal-pair source given ({source!r}); use 'default' or a folder of .jsonl files")
        from wml_framework import scoring

        self.source, self.limit, self.batch_size = path, limit, batch_size
        self.pairs = scoring.read_minimal_pairs(path, limit)

    @classmethod
    def from_config(cls, cfg, *, batch_size: int = 64) -> "MinimalPairsEvaluator":
        return cls(cfg.blimp, cfg.blimp_limit or None, batch_size)

    def __call__(self, model, tokenizer, *, device=None, progress=None, desc: str | None = None) -> dict:
        from wml_framework import scoring

        result = scoring.score_minimal_pairs(model, tokenizer, self.pairs, batch_size=self.batch_size, device=device,
                                             progress=progress, desc=desc or "minimal pairs")
        result["limit"] = self.limit
        return result


@hookimpl
def wml_register_evaluators(register):
    register("perplexity", PerplexityEvaluator.from_config,
             help="Held-out perplexity (token-mean loss over non-overlapping blocks of the corpus's held-out split).")
    register("minimal_pairs", MinimalPairsEvaluator.from_config,
             help="Minimal-pair accuracy (BLiMP-format .jsonl: per file/UID and macro average), BOS prepended.")
