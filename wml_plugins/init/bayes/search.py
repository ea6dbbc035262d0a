"""Bayesian optimization of one peer's architecture so that its parameter count hits a target.

The objective is −|P − target| / target (method.md §6) minus ``diversity`` for a shape that an
earlier peer already took (and, in the efficient space, minus 1 for a shape deeper than its
width allows), maximised by ``bayes_opt`` over integer indices into a
:class:`~.space.SizingSpace`. "Took" is judged by ``by``: the same layers, heads and width
(``ARCH``, so that peers differ where the seed card asks) or the same whole shape (``SHAPE``).

Two settings make the seed card's budget (10 random + 100 guided probes) reliable and fast,
both through bayes_opt's public API:

- an anisotropic Matérn kernel (one length scale per variable, set with ``set_gp_params``):
  the default isotropic kernel must share one length scale between 4 layer values and ~170
  FFN values, and missed 1% on 4 to 10 of 24 targets (GPT-2 ~4M and LLaMA ~27M teachers);
- UCB whose exploration decays (κ = 2.576 · 0.98^t after 10 steps), its maximisation over
  2000 random grid points instead of differential evolution (slow, and no help on an integer
  grid). Faster decay (0.95) got stuck re-probing one point of a tiny space; no decay
  explores too long. With these settings no target missed max(1%, exhaustive optimum) in 192
  searches (six teachers from 30k to 27M parameters, 8 seeds; worst error 0.46%).

BLAS is limited to one thread during the search: the GP's matrices are ~100×100 and
threading them costs 5× the time on a busy 2-core machine.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from bayes_opt import BayesianOptimization, acquisition
from sklearn.gaussian_process.kernels import Matern
from threadpoolctl import threadpool_limits

from ..common import rel_error
from .space import SHAPE, VARIABLES, SizingSpace, key_of

__all__ = ["ACQ_RANDOM_POINTS", "DISPROPORTION", "NoFreeShape", "SearchResult", "search_shape"]

ACQ_RANDOM_POINTS = 2000
DISPROPORTION = 1.0   # objective penalty of a shape deeper than width / 16 (efficient space only)
KAPPA, KAPPA_DECAY, KAPPA_DECAY_DELAY = 2.576, 0.98, 10


class _GridUCB(acquisition.UpperConfidenceBound):
    """UCB with a decaying κ whose maximisation samples ``ACQ_RANDOM_POINTS`` grid points."""

    def suggest(self, gp, target_space, n_random=ACQ_RANDOM_POINTS, n_smart=0, fit_gp=True, random_state=None):
        return super().suggest(gp, target_space, n_random=ACQ_RANDOM_POINTS, n_smart=0,
                               fit_gp=fit_gp, random_state=random_state)


class NoFreeShape(ValueError):
    """Every probe of a search hit a taken (or disproportioned) shape."""


@dataclass
class SearchResult:
    """The chosen shape of one peer and every probe that led to it."""

    shape: dict
    parameters: int
    error: float
    trace: list = field(default_factory=list)


def search_shape(space: SizingSpace, target: int, *, init_points: int, n_iter: int, seed: int,
                 taken: frozenset = frozenset(), diversity: float = 1.0, peer: int = 0,
                 by: str = SHAPE) -> SearchResult:
    """Bayesian search for the shape whose exact parameter count is nearest ``target``,
    avoiding the keys in ``taken`` (``shape_key`` or ``arch_key`` strings, as ``by`` says).
    Deterministic for a given ``seed``."""
    trace: list[dict] = []
    key = key_of(by)

    def objective(**index) -> float:
        shape = space.shape(**index)
        count = space.count(shape)
        err = rel_error(count, target)
        duplicate = key(shape) in taken
        proportioned = space.well_proportioned(shape)
        score = -err - (diversity if duplicate else 0.0) - (0.0 if proportioned else DISPROPORTION)
        trace.append(dict(peer=peer, probe=len(trace), **shape, parameters=count, target=int(target),
                          error=err, duplicate=duplicate, avoid=by, proportioned=proportioned, space=space.kind,
                          objective=score))
        return score

    ranges = np.array([max(hi - lo, 1) for lo, hi, _ in space.pbounds().values()], dtype=float)
    with threadpool_limits(1), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # bayes_opt warns that integer parameters are "experimental" and prints a line per
        # duplicate probe; both are expected here and would only clutter the command's output.
        warnings.simplefilter("ignore")
        optimizer = BayesianOptimization(
            objective, pbounds=space.pbounds(), random_state=int(seed) % 2**32, allow_duplicate_points=True,
            verbose=0, acquisition_function=_GridUCB(kappa=KAPPA, exploration_decay=KAPPA_DECAY,
                                                     exploration_decay_delay=KAPPA_DECAY_DELAY))
        optimizer.set_gp_params(kernel=Matern(nu=2.5, length_scale=ranges / 4, length_scale_bounds=(1e-2, 1e4)),
                                n_restarts_optimizer=0)
        optimizer.maximize(init_points=init_points, n_iter=n_iter)

    free = [p for p in trace if not p["duplicate"] and p["proportioned"]]
    if not free:
        raise NoFreeShape(f"peer {peer}: every probe of the search hit a shape another peer already has "
                         f"(same {by}) or one deeper than its width allows")
    best = min(free, key=lambda p: (p["error"], p["probe"]))
    shape = {k: best[k] for k in (*VARIABLES, "hidden")}
    return SearchResult(shape=shape, parameters=best["parameters"], error=best["error"], trace=trace)
