"""``wml compare``: the seed card's question as one command.

Every method trains the same peers (same shapes, initial weights, teacher, tokenizer, data order
and token budget) once per seed, each member an ordinary run folder; the results are gathered
into ``comparison.json``, ``comparison.md`` and plots, with paired differences against a baseline
method and their 95% confidence intervals.

    methods.py  which loss, updater and settings a method name stands for
    plan.py     the members of a comparison and their configurations, checked before any work
    execute.py  the teacher, then each member (skipping finished ones, resuming an interrupted one)
    results.py  reading the members back, statistics, comparison.json and comparison.md
    measures.py the quality measures read from each member (a leaf the tables and plots share)
    plots.py    the comparison's figures

May import: :mod:`wml_framework.runner` and everything below it; it is a recipe built of runs.
"""

from .execute import run_compare
from .methods import BUILTIN_METHODS, DEFAULT_METHODS, Method, parse_methods
from .plan import ComparePlan, Member, make_plan

__all__ = ["BUILTIN_METHODS", "DEFAULT_METHODS", "Method", "parse_methods", "ComparePlan", "Member", "make_plan",
           "run_compare"]
