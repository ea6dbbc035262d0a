"""Importance of every prunable unit of a model: heads, FFN neurons, hidden dims and layers.

A unit's importance is a norm of the weights that belong to it (method.md §7), found through
the family's axis map, so that one implementation serves every family:

- ``l1``: Σ|w| over the unit's weights;
- ``l2``: sqrt(Σw²);
- ``taylor``: Σ|∂L/∂w · w| with L the cross-entropy on a calibration batch (the first-order
  estimate of the loss change when the unit is removed; "differential" importance).

A weight can belong to several units (a q/k/v weight belongs to a head and to a hidden dim);
it counts for each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from wml_framework.api import IGNORE_INDEX, Batch

__all__ = ["IMPORTANCE_KINDS", "Importance", "elementwise_scores", "calibration_gradients", "unit_importance"]

IMPORTANCE_KINDS = ("l1", "l2", "taylor")


@dataclass
class Importance:
    """Scores per unit: ``head`` (L, K), ``neuron`` (L, F), ``hidden`` (h,), ``layer`` (L,)."""

    kind: str
    head: torch.Tensor
    neuron: torch.Tensor
    hidden: torch.Tensor
    layer: torch.Tensor


def elementwise_scores(model, kind: str, calibration: Batch | None = None) -> dict[str, torch.Tensor]:
    """Per-weight contribution (float64) to the importance, by parameter name."""
    if kind not in IMPORTANCE_KINDS:
        raise ValueError(f"prune_importance must be one of {', '.join(IMPORTANCE_KINDS)}, got {kind!r}")
    params = dict(model.named_parameters())
    if kind == "l1":
        return {n: p.detach().double().abs() for n, p in params.items()}
    if kind == "l2":
        return {n: p.detach().double().square() for n, p in params.items()}
    if calibration is None:
        raise ValueError("prune_importance 'taylor' needs a calibration batch (gradient × weight)")
    grads = calibration_gradients(model, calibration)
    return {n: (grads[n].double() * p.detach().double()).abs() for n, p in params.items()}


def calibration_gradients(model, batch: Batch) -> dict[str, torch.Tensor]:
    """∂CE/∂θ on ``batch`` without touching the model's ``.grad`` or ``requires_grad``."""
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    inputs = batch.for_peer(0)
    with torch.enable_grad():
        logits = functional_call(model, params, args=(), kwargs={"input_ids": inputs}).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 batch.labels.reshape(-1), ignore_index=IGNORE_INDEX)
        names = list(params)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, grads)}


def unit_importance(model, family, kind: str = "l1", calibration: Batch | None = None) -> Importance:
    """Importance of every unit of ``model`` (a model of ``family``)."""
    config = model.config
    axes, units = family.prunable_axes(config), family.unit_counts(config)
    L = units["layer"]
    totals = {"head": torch.zeros(L, units["head"], dtype=torch.float64),
              "neuron": torch.zeros(L, units["neuron"], dtype=torch.float64),
              "hidden": torch.zeros(units["hidden"], dtype=torch.float64),
              "layer": torch.zeros(L, dtype=torch.float64)}
    for name, score in elementwise_scores(model, kind, calibration).items():
        score = score.cpu()
        layer = family.layer_of(name)
        if layer is not None:
            totals["layer"][layer] += score.sum()
        for dim, axis in enumerate(axes[name]):
            if axis is None:
                continue
            other = [d for d in range(score.ndim) if d != dim]
            along = score.sum(dim=other) if other else score
            per_unit = along.reshape(axis.repeat, units[axis.unit], axis.width).sum(dim=(0, 2))
            if axis.layer is None:
                totals[axis.unit] += per_unit
            else:
                totals[axis.unit][axis.layer] += per_unit
    if kind == "l2":
        totals = {k: v.sqrt() for k, v in totals.items()}
    return Importance(kind=kind, **totals)
