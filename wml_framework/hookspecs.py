"""Hook specifications: the whole contract between the wml core and its plugins.

Every named extension point follows the ``register`` style: the hook receives a
``register(name, factory, *, help="", options=(), references=())`` callable and calls it once per
thing it provides (``options``: :class:`~wml_framework.api.Option` declarations, passed to the
factory as keyword arguments; ``references``: :class:`~wml_framework.api.ReferencePoint` objects
that ``wml verify`` checks). The core never imports an implementation by name; it only sees what
was registered. The types are in :mod:`wml_framework.api`; ``docs/plugins.md`` has an example of each.
"""

import pluggy

__all__ = ["PROJECT", "wml_register_model_families", "wml_register_initializers", "wml_register_losses",
           "wml_register_updaters", "wml_register_evaluators", "wml_register_objectives", "wml_run_event"]

PROJECT = "wml"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def wml_register_model_families(register):
    """Register model families: a factory ``make()`` returning a :class:`~wml_framework.api.ModelFamily`
    (:class:`~wml_framework.api.SizableFamily` for ``bayes``, :class:`~wml_framework.api.PrunableFamily` for ``l1``)."""


@hookspec
def wml_register_initializers(register):
    """Register peer initializers: a factory ``make(config, **options)`` returning an
    :class:`~wml_framework.api.Initializer` (``build(teacher, family, targets, ...) -> InitResult``)."""


@hookspec
def wml_register_losses(register):
    """Register inner-loop losses: a factory ``make(config, **options)`` returning a
    :class:`~wml_framework.api.Loss` (``loss(logits, labels, omega, teacher_logits=None) -> LossResult``)."""


@hookspec
def wml_register_updaters(register):
    """Register ω updaters: a factory ``make(config, num_peers, **options)`` returning an
    :class:`~wml_framework.api.Updater` (``step(ctx: OuterContext) -> UpdateResult``)."""


@hookspec
def wml_register_evaluators(register):
    """Register evaluators: a factory ``make(config, **options)`` returning an
    :class:`~wml_framework.api.Evaluator` (``evaluator(model, tokenizer, ...) -> dict``), or None
    when the configuration gives it nothing to score."""


@hookspec
def wml_register_objectives(register):
    """Register training objectives: a factory ``make(config, **options)`` returning an
    :class:`~wml_framework.api.Objective` (``batch(block, step, gen, tokens) -> (inputs, labels)``)."""


@hookspec
def wml_run_event(event, payload):
    """Observe a run: called with an :class:`~wml_framework.api.Event` name (``run_start``, ``train``,
    ``outer``, ``eval``, ``checkpoint``, ``run_end``) and a dict of plain values (for ``train``,
    ``outer`` and ``eval``, the record logged to ``metrics.jsonl``; for ``run_start``, ``step``, ``num_peers`` and
    ``config``, the run's configuration as a dict)."""
