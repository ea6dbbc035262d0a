"""Switch Hugging Face models to eager attention for a block, where a derivative of a derivative
is taken (the exact hypergradient's double backward, and the inner step that prepares it).

Why: SDPA's CPU and flash kernels have neither a double-backward nor a forward-AD formula. Eager
attention computes the same function (up to rounding), so only those passes switch; everything
else keeps the faster kernel. The previous implementation is restored on exit, whatever happens.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

__all__ = ["EAGER", "attn_implementation", "eager_attention"]

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
def eager_attention(models: Sequence[nn.Module]) -> Iterator[None]:
    """Hugging Face models on ``attn_implementation="eager"`` for the block; other modules untouched."""
    previous = [attn_implementation(m) for m in models]
    switched = []
    try:
        for model, attn in zip(models, previous):
            if attn is not None and attn != EAGER:
                _set_attn(model, EAGER)
                switched.append((model, attn))
        yield
    finally:
        for model, attn in switched:
            _set_attn(model, attn)
