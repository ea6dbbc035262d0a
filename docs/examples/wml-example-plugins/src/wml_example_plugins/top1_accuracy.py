"""``top1``: next-token top-1 accuracy on the evaluated half of the corpus's held-out split.

An evaluator scores one model (a Hugging Face causal LM, or a run's ω-ensemble, which also returns
logits) and returns a JSON-serialisable dict. ``columns`` says how a result reads in ``wml eval``'s
table; ``summary`` is stored once at the top of ``eval.json``. The factory returns None when the
configuration gives it nothing to score.
"""

from __future__ import annotations

import torch

from wml_framework import hookimpl
from wml_framework.api import Option, peer_logits


class Top1Accuracy:
    def __init__(self, cfg, max_blocks: int):
        self.cfg, self.block_size, self.max_blocks = cfg, cfg.block_size, max_blocks

    def __call__(self, model, tokenizer, *, device=None, progress=None, desc=None) -> dict:
        from wml_framework.evaluation.heldout import block_starts
        from wml_framework.text.tokens import prepare_for

        stream = prepare_for(self.cfg, tokenizer=tokenizer, log=lambda m: None).val_eval   # the run's held-out text
        starts = block_starts(len(stream), self.block_size, self.max_blocks)
        rows = torch.tensor([[int(t) for t in stream[s:s + self.block_size + 1]] for s in starts])
        model.eval()
        with torch.no_grad():
            logits = peer_logits(model, rows[:, :-1].to(device or "cpu"))
        hits = (logits.argmax(-1).cpu() == rows[:, 1:]).float()
        return {"accuracy": float(hits.mean()), "tokens": int(hits.numel())}

    def columns(self, result: dict) -> dict:
        return {"top-1": f"{100 * result['accuracy']:.1f}%"}

    def summary(self) -> dict:
        return {"corpus": self.cfg.corpus, "split": "held-out, evaluated half", "max_blocks": self.max_blocks}


def make_top1(cfg, *, max_blocks: int):
    """Next-token top-1 accuracy on held-out text."""
    if cfg.corpus.strip().lower() in ("", "none"):
        return None
    return Top1Accuracy(cfg, max_blocks)


@hookimpl
def wml_register_evaluators(register):
    register("top1", make_top1, options=[Option("max_blocks", 8, "Held-out blocks scored.", low=1)])
