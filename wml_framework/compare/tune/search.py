"""The next trials' values: random draws first, then Bayesian optimization (``bayesian-optimization``).

The first ``random_trials`` trials are drawn uniformly in the search coordinates (log space for a
log key) by a generator seeded with the config seed and the trial's number, so a trial's draw does
not depend on how many were drawn before it. Later trials are suggested by a Gaussian process
fitted to the finished ones (expected improvement). Several suggested at once (``--jobs``) are
made different by a *constant liar*: each pending point, and each point already suggested in the
batch, is registered with the worst loss seen so far in a scratch optimizer, so the next
suggestion looks elsewhere. A failed trial is registered at the worst loss seen too: the search
learns that its region is bad (a diverging learning rate), without a made-up penalty that would
squash the spread of the real losses the Gaussian process models.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from .space import Space

__all__ = ["Observation", "random_trials_for", "suggest"]


@dataclass(frozen=True)
class Observation:
    """A trial's values and its loss (None: failed, or not finished yet)."""

    values: Mapping
    loss: Optional[float] = None


def random_trials_for(trials: int) -> int:
    """How many of ``trials`` are random draws: a quarter, and at least two."""
    return max(2, trials // 4)


def _random_point(space: Space, seed: int, label: str, index: int) -> dict:
    rng = np.random.default_rng([seed, zlib.crc32(label.encode()), index])
    return space.from_search({key: rng.uniform(low, high) for key, (low, high) in space.bounds().items()})


def suggest(space: Space, *, seed: int, label: str, start: int, count: int, random_trials: int,
            finished: Sequence[Observation], failed: Sequence[Observation] = (),
            pending: Sequence[Observation] = ()) -> list[tuple[dict, str]]:
    """Values for trials ``start … start + count − 1`` of method ``label``, each with how it was
    chosen ('random' or 'bayes'). ``finished`` have a loss; ``failed`` and ``pending`` do not."""
    out: list[tuple[dict, str]] = []
    scored = [o for o in finished if o.loss is not None and np.isfinite(o.loss)]
    optimizer = None
    for index in range(start, start + count):
        if index < random_trials or not scored:       # nothing to fit yet: a random draw as well
            out.append((_random_point(space, seed, label, index), "random"))
            continue
        if optimizer is None:
            optimizer = _fitted(space, seed + index, scored, [*failed, *pending])
        values = space.from_search(_quiet_suggest(optimizer))
        out.append((values, "bayes"))
        optimizer.register(params=space.to_search(values), target=-max(o.loss for o in scored))   # the liar
    return out


def _fitted(space: Space, seed: int, scored: Sequence[Observation], worst_of: Sequence[Observation]):
    from bayes_opt import BayesianOptimization
    from bayes_opt.acquisition import ExpectedImprovement

    optimizer = BayesianOptimization(f=None, pbounds=space.bounds(), random_state=seed % (2**32), verbose=0,
                                     allow_duplicate_points=True,
                                     acquisition_function=ExpectedImprovement(xi=0.01))
    for o in scored:
        optimizer.register(params=space.to_search(o.values), target=-float(o.loss))
    worst = -max(o.loss for o in scored)
    for o in worst_of:
        optimizer.register(params=space.to_search(o.values), target=worst)
    return optimizer


def _quiet_suggest(optimizer) -> dict:
    """The Gaussian process's fit may warn (a length scale at its bound): its lines are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimizer.suggest()
