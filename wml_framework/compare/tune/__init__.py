"""``wml tune``: a search for one method's best settings, on a seed the comparison leaves out.

    space.py    the tuned keys, their ranges and scales, each method's default space, ``--space``
    search.py   the next trials' values: random draws, then Bayesian optimization (constant liar)
    plan.py     ``tune.json``: the shared settings and each method's space, checked before any work
    trial.py    one trial: an ordinary run folder, its ``trial.json`` written before it trains
    outputs.py  ``trials.md``, ``best.toml`` and ``tuned.json``
    execute.py  the teacher, then each method's trials in batches, resumable

``wml compare --tuned DIR`` reads ``tuned.json`` (compare/tuned.py).
"""

from .execute import read_trials, run_tune
from .plan import TunePlan, make_tune_plan
from .space import make_space, parse_dimension

__all__ = ["TunePlan", "make_tune_plan", "make_space", "parse_dimension", "read_trials", "run_tune"]
