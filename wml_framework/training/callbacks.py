"""Callbacks: Python code that watches a run and steers it, as Hugging Face's ``TrainerCallback``.

A callback implements any of ``on_phase``, ``on_run_start``, ``on_train``, ``on_outer``, ``on_eval``,
``on_checkpoint`` and ``on_run_end`` (the :class:`~wml_framework.api.Event` names, which are
also the ``kind`` of the records in ``metrics.jsonl``). Each receives the event's payload (the
logged record, for ``train``/``outer``/``eval``), the training state and a
:class:`TrainerControl` whose flags ask the loop to stop, save or evaluate after this step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..api import Event

__all__ = ["TrainerControl", "TrainerCallback", "dispatch"]


@dataclass
class TrainerControl:
    """What callbacks ask of the loop; the loop acts on the flags after the current step and
    clears ``should_save``/``should_evaluate`` once done."""

    should_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False


class TrainerCallback:
    """Base class: override the events you care about (each gets payload, state, control)."""

    def on_phase(self, payload: dict, state: Any, control: TrainerControl) -> None: ...

    def on_run_start(self, payload: dict, state: Any, control: TrainerControl) -> None: ...

    def on_train(self, payload: dict, state: Any, control: TrainerControl) -> None: ...

    def on_outer(self, payload: dict, state: Any, control: TrainerControl) -> None: ...

    def on_eval(self, payload: dict, state: Any, control: TrainerControl) -> None: ...

    def on_checkpoint(self, payload: dict, state: Any, control: TrainerControl) -> None: ...

    def on_run_end(self, payload: dict, state: Any, control: TrainerControl) -> None: ...


def dispatch(callbacks: Sequence[Any], event: Event, payload: dict, state: Any, control: TrainerControl) -> None:
    """Call ``on_<event>`` of every callback that has it (duck-typed: no base class needed)."""
    for cb in callbacks:
        method = getattr(cb, f"on_{Event(event).value}", None)
        if method is not None:
            method(payload, state, control)
