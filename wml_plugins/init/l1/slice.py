"""Physically smaller copies of a model: choose the units to keep, then slice every tensor.

The result is an ordinary Hugging Face model of a standard config (built by the family), whose
tensors are index-selected copies of the teacher's; nothing is masked. With every unit kept
the copy computes exactly the teacher's function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from wml_framework.api import build_model

from .importance import Importance
from .plan import PrunePlan

__all__ = ["KeptUnits", "select_units", "removed_units", "sliced_state", "prune_model"]


@dataclass
class KeptUnits:
    """Original indices of the kept units, sorted: ``layers``; per original layer ``head`` and
    ``neuron``; the global ``hidden`` dims."""

    layers: list
    head: dict = field(default_factory=dict)
    neuron: dict = field(default_factory=dict)
    hidden: torch.Tensor = None

    def indices(self, unit: str, layer) -> torch.Tensor:
        return self.hidden if unit == "hidden" else getattr(self, unit)[layer]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order (ties: lower index)."""
    order = torch.sort(-scores, stable=True).indices[:k]
    return order.sort().values


def select_units(importance: Importance, plan: PrunePlan) -> KeptUnits:
    """Keep the most important layers, and in each the most important heads and neurons."""
    layers = _top(importance.layer, plan.n_layer).tolist()
    return KeptUnits(layers=layers,
                     head={l: _top(importance.head[l], plan.head_units) for l in layers},
                     neuron={l: _top(importance.neuron[l], plan.ffn) for l in layers},
                     hidden=_top(importance.hidden, plan.hidden))


def removed_units(kept: KeptUnits, units: dict) -> dict:
    """What pruning removed, in original indices (for the trace)."""
    gone = lambda keep, n: sorted(set(range(n)) - set(int(i) for i in keep))  # noqa: E731
    return dict(layers=gone(kept.layers, units["layer"]),
                head={l: gone(kept.head[l], units["head"]) for l in kept.layers},
                neuron={l: gone(kept.neuron[l], units["neuron"]) for l in kept.layers},
                hidden=gone(kept.hidden, units["hidden"]))


def sliced_state(model, family, kept: KeptUnits) -> dict:
    """The kept slices of every parameter, under the pruned model's parameter names."""
    axes, units = family.prunable_axes(model.config), family.unit_counts(model.config)
    new_index = {old: new for new, old in enumerate(kept.layers)}
    state = {}
    for name, p in model.named_parameters():
        layer = family.layer_of(name)
        if layer is not None and layer not in new_index:
            continue
        t = p.detach()
        for dim, axis in enumerate(axes[name]):
            if axis is not None:
                pos = axis.positions(kept.indices(axis.unit, axis.layer).numpy(), units[axis.unit])
                t = t.index_select(dim, torch.as_tensor(pos, device=t.device))
        state[name if layer is None else family.rename_layer(name, new_index[layer])] = t.clone()
    return state


def prune_model(model, family, kept: KeptUnits, plan: PrunePlan):
    """A new, smaller model holding the kept slices of ``model``'s weights."""
    config = family.pruned_config(model.config, n_layer=plan.n_layer, head_units=plan.head_units,
                                  ffn=plan.ffn, hidden=plan.hidden)
    state = sliced_state(model, family, kept)
    with torch.random.fork_rng():  # the random init is overwritten; keep the caller's RNG as it was
        pruned = build_model(config)
    pruned = pruned.to(device=next(model.parameters()).device, dtype=model.dtype)
    expected = dict(pruned.named_parameters())
    if set(expected) != set(state):
        raise RuntimeError(f"{family.name}: sliced parameters do not match the pruned model: "
                           f"missing {sorted(set(expected) - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - set(expected))[:5]}")
    for name, tensor in state.items():
        if expected[name].shape != tensor.shape:
            raise RuntimeError(f"{family.name}: {name} sliced to {tuple(tensor.shape)} but the pruned "
                               f"config needs {tuple(expected[name].shape)}")
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor)
    return pruned.eval()
