"""The ``l1`` peer initializer: structured pruning of the teacher (method.md §7).

Each peer is a physically smaller copy of the teacher that keeps its most important heads,
FFN neurons, hidden dimensions and (only if needed) layers, ranked by ``prune_importance``
(``l1``, ``l2``, or ``taylor`` = |gradient × weight| on a calibration batch). Every layer keeps
the same number of units and none loses more than ``layer_bound`` of them, so each peer is a
standard config that ``AutoModelForCausalLM.from_pretrained`` loads without custom code.
"""

from __future__ import annotations

from wml_framework import hookimpl
from wml_framework.api import InitResult, PrunableFamily, table_row

from ..common import check_request, check_targets
from .importance import IMPORTANCE_KINDS, unit_importance
from .plan import (
    DEFAULT_TOLERANCE,
    plan_pruning,
    smallest_parameters,
    validate_layer_bound,
)
from .slice import prune_model, removed_units, select_units

__all__ = ["L1Initializer", "make_l1", "wml_register_initializers"]


class L1Initializer:
    """Structured pruning; see the module docstring."""

    name = "l1"

    def __init__(self, *, importance: str = "l1", layer_bound: float = 0.9, tolerance: float = DEFAULT_TOLERANCE):
        if importance not in IMPORTANCE_KINDS:
            raise ValueError(f"l1: prune_importance must be one of {', '.join(IMPORTANCE_KINDS)}, got {importance!r}")
        self.importance = importance
        self.layer_bound = validate_layer_bound(layer_bound)
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"l1: the size tolerance must lie in (0, 1), got {tolerance}")
        self.tolerance = float(tolerance)

    def check(self, teacher_config, family, targets, *, calibration=None) -> None:
        """Reject impossible requests before any work."""
        check_request("l1", teacher_config, family, targets, PrunableFamily,
                      "be pruned: it does not describe its prunable units")
        if self.importance == "taylor" and calibration is None:
            raise ValueError("l1: prune_importance 'taylor' needs a calibration batch (gradient × weight)")
        family.prunable_axes(teacher_config)  # raises for architectures the family cannot slice
        check_targets("l1", targets, smallest_parameters(family, teacher_config, self.layer_bound),
                      family.count_parameters(teacher_config),
                      f"the smallest model pruning may leave with layer_bound={self.layer_bound}")

    def build(self, teacher, family, targets, *, calibration=None, seed: int = 0) -> InitResult:
        """Prune the teacher once per target. Deterministic: ``seed`` is not needed."""
        targets = [int(t) for t in targets]
        self.check(teacher.config, family, targets, calibration=calibration)
        importance = unit_importance(teacher, family, self.importance, calibration)
        units = family.unit_counts(teacher.config)
        peers, rows, trace = [], [], []
        for i, target in enumerate(targets):
            plan = plan_pruning(family, teacher.config, target, self.layer_bound, self.tolerance)
            kept = select_units(importance, plan)
            peer = prune_model(teacher, family, kept, plan)
            count = sum(p.numel() for p in peer.parameters())
            if count != plan.parameters:
                raise RuntimeError(f"l1: {family.name} planned {plan.parameters} parameters, "
                                   f"the pruned model has {count}")
            peers.append(peer)
            shape = family.shape_string(peer.config)
            rows.append(table_row(i, shape, count, target))
            trace.append(dict(peer=i, target=target, parameters=count, shape=shape, importance=self.importance,
                              layer_bound=self.layer_bound,
                              kept=dict(layer=plan.n_layer, head=plan.head_units, neuron=plan.ffn, hidden=plan.hidden),
                              of=units, removed=_jsonable(removed_units(kept, units))))
        return InitResult(peers=peers, rows=rows, trace=trace)


def _jsonable(removed: dict) -> dict:
    """Layer-keyed dicts get string keys so the trace is plain JSON."""
    return {k: ({str(l): v for l, v in val.items()} if isinstance(val, dict) else val) for k, val in removed.items()}


def make_l1(cfg) -> L1Initializer:
    """Structured pruning of the teacher (heads, neurons, hidden dims, layers) to each target."""
    return L1Initializer(importance=cfg.prune_importance, layer_bound=cfg.layer_bound)


@hookimpl
def wml_register_initializers(register):
    register("l1", make_l1, help="structured pruning of the teacher by weight importance (l1/l2/taylor)")
