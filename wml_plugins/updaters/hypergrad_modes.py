"""Put peers into a state where the hypergradient is well defined and computable, then restore.

Why: F(ω) must be a deterministic function (dropout off, method.md §4), and forward-mode AD or a
double backward through Hugging Face attention needs the eager implementation (from the core's
:mod:`wml_framework.training.attention`, which the trainer uses too). Both changes are undone on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

from wml_framework.training.attention import EAGER, attn_implementation, eager_attention

__all__ = ["EAGER", "attn_implementation", "eager_attention", "eval_mode"]


@contextmanager
def eval_mode(peers: Sequence[nn.Module]) -> Iterator[None]:
    """Every module of every peer in eval mode (dropout off); each module's own flag restored."""
    modes = [(m, m.training) for peer in peers for m in peer.modules()]
    try:
        for peer in peers:
            peer.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training
