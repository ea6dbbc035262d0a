"""The ``bayes`` peer initializer: architectures sized by Bayesian optimization, random weights.

For each target (N/2 … N/(M+1) by default) a seeded ``bayes_opt`` search over layers, heads,
head size and FFN width (bounds from the teacher) finds the shape whose exact parameter count
is nearest the target; shapes taken by earlier peers are penalised so all peers differ
(method.md §6). Peers are fresh Hugging Face models of those shapes.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from wml_framework import hookimpl
from wml_framework.api import InitResult, SizableFamily, shape_string, table_row

from ..common import check_family, check_targets
from .search import search_shape
from .space import SizingSpace, shape_key


class BayesInitializer:
    """Sizes peers by Bayesian optimization; see the module docstring."""

    name = "bayes"

    def __init__(self, *, init_points: int = 10, n_iter: int = 100, diversity: float = 1.0):
        if int(init_points) < 1:
            raise ValueError(f"bayes: bayesian_init_points must be at least 1, got {init_points}")
        if int(n_iter) < 0:
            raise ValueError(f"bayes: bayesian_n_iter must be non-negative, got {n_iter}")
        if not diversity >= 0:
            raise ValueError(f"bayes: the diversity penalty must be non-negative, got {diversity}")
        self.init_points, self.n_iter, self.diversity = int(init_points), int(n_iter), float(diversity)

    def check(self, teacher_config, family, targets, *, calibration=None) -> SizingSpace:
        """Reject impossible requests before any search; returns the search space."""
        check_family(teacher_config, family)
        if not isinstance(family, SizableFamily):
            raise ValueError(f"bayes: family {family.name!r} cannot be sized: it lacks count_shapes or head_dim_multiple "
                             "(see wml_framework.api.SizableFamily)")
        if not targets:
            raise ValueError("bayes: no peer targets (the number of peers M must be at least 1)")
        space = SizingSpace.from_teacher(family, teacher_config)
        lowest = {k: int(v[0]) for k, v in space.values.items()}
        check_targets("bayes", targets, space.min_parameters, family.count_parameters(teacher_config),
                      f"the smallest {family.name} model this teacher allows, {shape_key(lowest)}",
                      "the search space is bounded by the teacher's shape")
        return space

    def build(self, teacher, family, targets, *, calibration=None, seed: int = 0) -> InitResult:
        """Search a shape per target, then build freshly initialised peers (seeded)."""
        targets = [int(t) for t in targets]
        space = self.check(teacher.config, family, targets)
        results, trace, taken = [], [], set()
        for i, target in enumerate(targets):
            res = search_shape(space, target, init_points=self.init_points, n_iter=self.n_iter,
                               seed=seed + 7919 * i, taken=frozenset(taken), diversity=self.diversity, peer=i)
            taken.add(shape_key(res.shape))
            results.append(res)
            trace.extend(res.trace)
        peers, rows = [], []
        for i, (res, target) in enumerate(zip(results, targets)):
            config = space.config(res.shape)
            with torch.random.fork_rng():
                torch.manual_seed(seed + i)
                peer = AutoModelForCausalLM.from_config(config).to(teacher.dtype).eval()
            count = sum(p.numel() for p in peer.parameters())
            if count != res.parameters:  # the analytic count is the search's whole premise
                raise RuntimeError(f"bayes: {family.name} counted {res.parameters} parameters for "
                                   f"{shape_string(res.shape)} but the model has {count}")
            peers.append(peer)
            rows.append(table_row(i, shape_string(res.shape), count, target))
        return InitResult(peers=peers, rows=rows, trace=trace)


def make_bayes(cfg) -> BayesInitializer:
    """Peers sized by Bayesian optimization over layers/heads/head size/FFN; random weights."""
    return BayesInitializer(init_points=cfg.bayesian_init_points, n_iter=cfg.bayesian_n_iter)


@hookimpl
def wml_register_initializers(register):
    register("bayes", make_bayes, help="Bayesian-optimised peer shapes hitting N/2…N/(M+1), random init")
