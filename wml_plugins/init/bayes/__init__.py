"""The ``bayes`` peer initializer: architectures sized by Bayesian optimization, random weights.

For each target (N/2 … N/(M+1) by default) a seeded ``bayes_opt`` search over layers, width,
head size and FFN width (bounds from the teacher) finds the shape whose exact parameter count
is nearest the target. The search prefers shapes that compute well (widths a multiple of 32, or
64 on a GPU; heads of 16 or more; see ``space.py``) and falls back to any shape for a target
those cannot reach within 1%. Peers differ as the seed card asks, in layers, heads or width:
probes with the layers, heads and width of an earlier peer are penalised (method.md §6's
diversity term) wherever exhaustive enumeration shows another shape within 1% of the target;
only where none exists may a peer share them (differing in FFN width), and the init table then
says so (``shares_layers_heads_width_with`` and a ``note`` per row). Peers tie their input
embedding and output head (``tie_embeddings``): at small-LM sizes the vocabulary matrices are
most of the parameters, and one copy leaves the budget to width and depth. Peers are fresh
Hugging Face models of those shapes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from wml_framework import hookimpl
from wml_framework.api import (
    InitResult,
    Option,
    SizableFamily,
    build_model,
    shape_string,
    table_row,
)

from ..common import check_request, check_targets
from .search import NoFreeShape, search_shape
from .space import (
    ARCH,
    EFFICIENT,
    SHAPE,
    SizingSpace,
    arch_key,
    arch_string,
    key_of,
    shape_key,
)

__all__ = ["REACH", "SEARCHES", "BayesInitializer", "default_width_multiple", "make_bayes", "wml_register_initializers"]

REACH = 0.01   # the efficient space is used for a target it reaches within 1%
SEARCHES = 2   # searches per peer at most: a second only where the first misses REACH


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
        check_request("bayes", teacher_config, family, targets, SizableFamily,
                      "be sized: it lacks count_shapes or head_dim_multiple")
        space = SizingSpace.from_teacher(family, self.peer_base(teacher_config))
        lowest = {k: int(v[0]) for k, v in space.values.items()}
        check_targets("bayes", targets, space.min_parameters, family.count_parameters(teacher_config),
                      f"the smallest {family.name} model this teacher allows, {shape_key(lowest)}",
                      "the search space is bounded by the teacher's shape")
        return space

    def build(self, teacher, family, targets, *, calibration=None, seed: int = 0) -> InitResult:
        """Search a shape per target, peer by peer, avoiding what earlier peers took; then build
        freshly initialised peers (seeded). See :meth:`_search_peer` for the order of preference."""
        targets = [int(t) for t in targets]
        any_space = self.check(teacher.config, family, targets)
        efficient = SizingSpace.from_teacher(family, self.peer_base(teacher.config), self.width_multiple)
        spaces = [efficient, any_space] if efficient.kind == EFFICIENT else [any_space]
        chosen, trace, taken = [], [], []
        for i, target in enumerate(targets):
            res, space, why = self._search_peer(i, target, spaces, taken, seed)
            taken.append(res.shape)
            chosen.append((res, space, why))
            trace.extend(res.trace)
        peers, rows = [], []
        for i, ((res, space, _), target) in enumerate(zip(chosen, targets)):
            config = space.config(res.shape)
            with torch.random.fork_rng():
                torch.manual_seed(seed + i)
                peer = build_model(config).to(teacher.dtype).eval()
            count = sum(p.numel() for p in peer.parameters())
            if count != res.parameters:  # the analytic count is the search's whole premise
                raise RuntimeError(f"bayes: {family.name} counted {res.parameters} parameters for "
                                   f"{shape_string(res.shape)} but the model has {count}")
            peers.append(peer)
            rows.append({**table_row(i, shape_string(res.shape), count, target), "space": space.kind,
                         **_sharing(i, [c[0].shape for c in chosen], chosen[i][2])})
        return InitResult(peers=peers, rows=rows, trace=trace)

    def _search_peer(self, i: int, target: int, spaces: list, taken: list, seed: int):
        """One peer's shape: ``(SearchResult, its space, why it shares layers/heads/width or None)``.

        Preference, each tried only where exhaustive enumeration shows a shape within ``REACH``:
        the efficient space, then any shape, with layers/heads/width no earlier peer has (the seed
        card's diversity); then the same two spaces with only the whole shape new (peers then
        differ in FFN width alone). Last, any new shape however far (a target nothing reaches).
        The search runs in the first of these; only if it misses ``REACH`` does a second run in
        the next (at most ``SEARCHES`` per peer, as before peers had to differ), and the nearer
        result is taken."""
        any_space = spaces[-1]
        ways = (ARCH, SHAPE) if taken else (ARCH,)     # with nothing taken the two are one search
        plan = [(space, by) for by in ways for space in spaces
                if space.exhaustive_best(target, exclude=taken, by=by)[1] <= REACH]
        if not any(space is any_space and by == ways[-1] for space, by in plan):
            plan.append((any_space, ways[-1]))
        best, probes, missed = None, [], None
        for space, by in plan[:SEARCHES]:
            try:
                res = search_shape(space, target, init_points=self.init_points, n_iter=self.n_iter,
                                   seed=seed + 7919 * i, taken=frozenset(map(key_of(by), taken)),
                                   diversity=self.diversity, peer=i, by=by)
            except NoFreeShape as exc:
                missed = exc
                continue
            probes.extend(res.trace)
            if best is None or res.error < best[0].error:
                best = (res, space, by)
            if res.error <= REACH:
                break
        if best is None:
            raise missed
        res, space, by = best
        res.trace = probes
        why = None
        if by == SHAPE and any(arch_key(t) == arch_key(res.shape) for t in taken):
            nearest, err = min((s.exhaustive_best(target, exclude=taken, by=ARCH) for s in spaces), key=lambda b: b[1])
            if err <= REACH:
                why = (f"a shape of other layers, heads or width exists within {REACH:.0%} of the target "
                       f"({shape_string(nearest)}, {err:.2%} off) but the search did not find it")
            elif np.isfinite(err):
                why = (f"no shape of other layers, heads or width comes within {REACH:.0%} of the target "
                       f"{target:,}: the nearest, {shape_string(nearest)}, is {err:.2%} off")
            else:
                why = "every combination of layers, heads and width the teacher allows is taken by an earlier peer"
        return res, space, why


def _sharing(i: int, shapes: list, why) -> dict:
    """The init table's account of diversity for peer ``i``: the peers with its layers, heads and
    width (``shares_layers_heads_width_with``, empty when none) and, if any, a ``note`` saying why."""
    same = [j for j, s in enumerate(shapes) if j != i and arch_key(s) == arch_key(shapes[i])]
    out = {"shares_layers_heads_width_with": same}
    if not same:
        return out
    earlier, later = [j for j in same if j < i], [j for j in same if j > i]
    peers = lambda js: ("peer " if len(js) == 1 else "peers ") + ", ".join(map(str, js))  # noqa: E731
    if earlier:
        out["note"] = (f"same {arch_string(shapes[i])} as {peers(earlier)} (differs in FFN width only): "
                       f"{why or 'no other shape was found'}")
    else:
        out["note"] = (f"same {arch_string(shapes[i])} as {peers(later)} (differs in FFN width only): "
                       f"see {'its' if len(later) == 1 else 'their'} note")
    return out


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
