"""Callbacks: Python code that watches a run and steers it, as Hugging Face's ``TrainerCallback``.

A callback implements any of ``on_phase``, ``on_run_start``, ``on_train``, ``on_outer``, ``on_eval``,
``on_checkpoint`` and ``on_run_end`` (the :class:`~wml_framework.api.Event` names, which are
also the ``kind`` of the records in ``metrics.jsonl``). Each receives the event's payload (the
logged record, for ``train``/``outer``/``eval``), a :class:`TrainerState` (where the run is) and a
:class:`TrainerControl` whose flags ask the loop to stop, save or evaluate after this step.

Callbacks hear both training loops of a run: the teacher's (when ``wml run`` trains one; its
records go to ``teacher_metrics.jsonl``) and the peers'. ``state.model`` says which is training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..api import Event

__all__ = ["TrainerControl", "TrainerState", "TrainerCallback", "dispatch"]


@dataclass
class TrainerControl:
    """What callbacks ask of the loop; the loop acts on the flags after the current step and
    clears ``should_save``/``should_evaluate`` once done."""

    should_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False


@dataclass(frozen=True)
class TrainerState:
    """Where the run is, as a callback sees it at an event (a copy: changing it changes nothing).

    ``phase`` is the stage of ``wml run`` (``data``, ``teacher``, ``peers``, ``training``, ``export``,
    ``evaluation``, ``report``); ``model`` is what the training loop trains or last trained:
    ``"teacher"`` or ``"peers"`` (``""`` before either). The other fields are that loop's: optimizer
    steps taken and to take, tokens seen, ω (one weight per model), the best held-out loss of the
    ω-ensemble and the evaluations since it improved, whether early stopping ended it, how many
    models it trains."""

    phase: str = ""
    model: str = ""
    step: int = 0
    max_steps: int = 0
    tokens: int = 0
    omega: tuple = ()
    best_val: float = math.inf
    bad_evals: int = 0
    stopped_early: bool = False
    num_models: int = 0
    run_dir: str = ""


class TrainerCallback:
    """Base class: override the events you care about (each gets payload, state, control)."""

    def on_phase(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...

    def on_run_start(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...

    def on_train(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...

    def on_outer(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...

    def on_eval(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...

    def on_checkpoint(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...

    def on_run_end(self, payload: dict, state: TrainerState, control: TrainerControl) -> None: ...


def dispatch(callbacks: Sequence[Any], event: Event, payload: dict, state: TrainerState,
             control: TrainerControl) -> None:
    """Call ``on_<event>`` of every callback that has it (duck-typed: no base class needed)."""
    for cb in callbacks:
        method = getattr(cb, f"on_{Event(event).value}", None)
        if method is not None:
            method(payload, state, control)
