"""The ``bayes`` peer initializer: architectures sized by Bayesian optimization, random weights.

For each target (N/2 … N/(M+1) by default) a seeded ``bayes_opt`` search over layers, width,
head size and FFN width (bounds from the teacher) finds the shape whose exact parameter count
is nearest the target; shapes taken by earlier peers are penalised so all peers differ
(method.md §6). The search prefers shapes that compute well (widths a multiple of 32, or 64 on
a GPU; heads of 16 or more; see ``space.py``) and falls back to any shape for a target those
cannot reach within 1%. Peers tie their input embedding and output head (``tie_embeddings``):
at small-LM sizes the vocabulary matrices are most of the parameters, and one copy leaves the
budget to width and depth. Peers are fresh Hugging Face models of those shapes.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM

from wml_framework import hookimpl
from wml_framework.api import InitResult, Option, SizableFamily, shape_string, table_row

from ..common import check_family, check_targets
from .search import search_shape
from .space import EFFICIENT, SizingSpace, shape_key

__all__ = ["REACH", "BayesInitializer", "default_width_multiple", "make_bayes", "wml_register_initializers"]

REACH = 0.01   # the efficient space is used for a target it reaches within 1%


class BayesInitializer:
    """Sizes peers by Bayesian optimization; see the module docstring."""

    name = "bayes"

    def __init__(self, *, init_points: int = 10, n_iter: int = 100, diversity: float = 1.0,
                 width_multiple: int = 1, tie_embeddings: bool = False):
        if int(init_points) < 1:
            raise ValueError(f"bayes: bayesian_init_points must be at least 1, got {init_points}")
        if int(n_iter) < 0:
            raise ValueError(f"bayes: bayesian_n_iter must be non-negative, got {n_iter}")
        if not diversity >= 0:
            raise ValueError(f"bayes: the diversity penalty must be non-negative, got {diversity}")
        if int(width_multiple) < 1:
            raise ValueError(f"bayes: width_multiple must be at least 1, got {width_multiple}")
        self.init_points, self.n_iter, self.diversity = int(init_points), int(n_iter), float(diversity)
        self.width_multiple, self.tie_embeddings = int(width_multiple), bool(tie_embeddings)

    def peer_base(self, teacher_config):
        """The config peers copy their other settings from: the teacher's, tied if asked."""
        if not self.tie_embeddings or getattr(teacher_config, "tie_word_embeddings", False):
            return teacher_config
        base = copy.deepcopy(teacher_config)
        base.tie_word_embeddings = True
        return base

    def check(self, teacher_config, family, targets, *, calibration=None) -> SizingSpace:
        """Reject impossible requests before any search; returns the space of any shape."""
        check_family(teacher_config, family)
        if not isinstance(family, SizableFamily):
            raise ValueError(f"bayes: family {family.name!r} cannot be sized: it lacks count_shapes or head_dim_multiple "
                             "(see wml_framework.api.SizableFamily)")
        if not targets:
            raise ValueError("bayes: no peer targets (the number of peers M must be at least 1)")
        space = SizingSpace.from_teacher(family, self.peer_base(teacher_config))
        lowest = {k: int(v[0]) for k, v in space.values.items()}
        check_targets("bayes", targets, space.min_parameters, family.count_parameters(teacher_config),
                      f"the smallest {family.name} model this teacher allows, {shape_key(lowest)}",
                      "the search space is bounded by the teacher's shape")
        return space

    def build(self, teacher, family, targets, *, calibration=None, seed: int = 0) -> InitResult:
        """Search a shape per target (in the efficient space when it reaches the target within 1%),
        then build freshly initialised peers (seeded)."""
        targets = [int(t) for t in targets]
        any_space = self.check(teacher.config, family, targets)
        efficient = SizingSpace.from_teacher(family, self.peer_base(teacher.config), self.width_multiple)
        results, spaces, trace, taken = [], [], [], []
        for i, target in enumerate(targets):
            space = any_space
            if efficient.kind == EFFICIENT and efficient.exhaustive_best(target, exclude=taken)[1] <= REACH:
                space = efficient
            res = search_shape(space, target, init_points=self.init_points, n_iter=self.n_iter,
                               seed=seed + 7919 * i, taken=frozenset(map(shape_key, taken)),
                               diversity=self.diversity, peer=i)
            if space is efficient and res.error > REACH:     # the search missed what exists: any shape then
                fallback = search_shape(any_space, target, init_points=self.init_points, n_iter=self.n_iter,
                                        seed=seed + 7919 * i, taken=frozenset(map(shape_key, taken)),
                                        diversity=self.diversity, peer=i)
                fallback.trace = res.trace + fallback.trace
                if fallback.error < res.error:
                    res, space = fallback, any_space
            taken.append(res.shape)
            results.append(res)
            spaces.append(space)
            trace.extend(res.trace)
        peers, rows = [], []
        for i, (res, target, space) in enumerate(zip(results, targets, spaces)):
            config = space.config(res.shape)
            with torch.random.fork_rng():
                torch.manual_seed(seed + i)
                peer = AutoModelForCausalLM.from_config(config).to(teacher.dtype).eval()
            count = sum(p.numel() for p in peer.parameters())
            if count != res.parameters:  # the analytic count is the search's whole premise
                raise RuntimeError(f"bayes: {family.name} counted {res.parameters} parameters for "
                                   f"{shape_string(res.shape)} but the model has {count}")
            peers.append(peer)
            rows.append({**table_row(i, shape_string(res.shape), count, target), "space": space.kind})
        return InitResult(peers=peers, rows=rows, trace=trace)


def default_width_multiple(device: str) -> int:
    """64 where the run uses a GPU (tensor-core tiles), 32 on CPUs (SIMD and cache blocks)."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return 64 if cuda else 32


def make_bayes(cfg, width_multiple: int = 0, tie_embeddings: bool = True) -> BayesInitializer:
    """Peers sized by Bayesian optimization over layers/width/head size/FFN; random weights."""
    return BayesInitializer(init_points=cfg.bayesian_init_points, n_iter=cfg.bayesian_n_iter,
                            width_multiple=width_multiple or default_width_multiple(str(cfg.device)),
                            tie_embeddings=tie_embeddings)


@hookimpl
def wml_register_initializers(register):
    register("bayes", make_bayes, help="Bayesian-optimised peer shapes hitting N/2…N/(M+1), random init",
             options=[Option("width_multiple", 0, "Peer widths a multiple of this where a target allows "
                             "(0: 64 on a GPU, 32 otherwise; 1: any width, as the seed card).", low=0, high=4096),
                      Option("tie_embeddings", True, "Peers share one matrix for input embedding and output head.")])
