"""How the loop runs its models forward: under which autocast, and whether the train-mode forward
is the function the hypergradient differentiates (no dropout)."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["deterministic_forward", "autocast_for"]


def deterministic_forward(peers) -> bool:
    """True when no peer has dropout (modules or Hugging Face config rates above 0): then the
    train-mode inner step computes exactly the function the hypergradient differentiates."""
    for peer in peers:
        if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in peer.modules()):
            return False
        config = getattr(peer, "config", None)
        values = config.to_dict() if hasattr(config, "to_dict") else {}
        for key, value in values.items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and value > 0:
                return False
    return True


def autocast_for(device: torch.device, bf16: bool):
    """A factory of fresh autocast contexts: bf16 on CUDA when asked, otherwise none.

    Why a factory: an ``autocast`` object stores the state it replaced on itself, so entering
    one object twice (nested) restores the wrong state on exit and leaves bf16 on for good."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext
