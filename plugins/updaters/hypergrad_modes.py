"""Put peers into a state where the hypergradient is well defined and computable, then restore.

Why: F(ω) must be a deterministic function (dropout off, method.md §4), and forward-mode AD
through Hugging Face attention needs the eager implementation (SDPA's CPU/flash kernels have
neither a forward-AD nor a double-backward formula). Eager attention computes the same function
as SDPA (up to rounding), so only the forward-mode pass switches to it; the first-order passes
keep the faster kernel. Both changes are undone on exit, whatever happens inside.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

EAGER = "eager"


def attn_implementation(model: nn.Module) -> str | None:
    """The attention implementation of a Hugging Face model, or None for other modules."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return None
    return getattr(config, "_attn_implementation", None)


def _set_attn(model: nn.Module, implementation: str) -> None:
    model.set_attn_implementation(implementation)
    now = attn_implementation(model)
    if now != implementation:
        raise RuntimeError(f"could not switch {type(model).__name__} to attn_implementation="
                           f"{implementation!r} (it stays {now!r})")


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


@contextmanager
def eager_attention(peers: Sequence[nn.Module]) -> Iterator[None]:
    """Hugging Face peers on ``attn_implementation="eager"`` for the block; other modules untouched."""
    previous = [attn_implementation(peer) for peer in peers]
    switched = []
    try:
        for peer, attn in zip(peers, previous):
            if attn is not None and attn != EAGER:
                _set_attn(peer, EAGER)
                switched.append((peer, attn))
        yield
    finally:
        for peer, attn in switched:
            _set_attn(peer, attn)
