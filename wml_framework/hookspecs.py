"""Hook specifications: the whole contract between the wml core and its plugins.

Every named extension point follows the ``register`` style: the hook receives a
``register(name, obj, *, help="")`` callable and calls it once per thing it provides.
The core never imports an implementation by name; it only sees what was registered.
"""

import pluggy

PROJECT = "wml"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def wml_register_model_families(register):
    """Register model families (e.g. ``gpt2``, ``llama``): objects that count parameters
    analytically, build configs of a given shape and slice a model for pruning."""


@hookspec
def wml_register_initializers(register):
    """Register peer initializers (e.g. ``bayes``, ``l1``): factories ``make(config)`` whose
    result turns a teacher and a list of parameter targets into peer models."""


@hookspec
def wml_register_losses(register):
    """Register inner-loop losses (e.g. ``wml``, ``kd``, ``ce``): factories ``make(config)``
    returning a callable from peer logits, labels and ω to a :class:`LossResult`."""


@hookspec
def wml_register_updaters(register):
    """Register peer-weight updaters (e.g. ``mirror``, ``uniform``, ``fixed``): factories
    ``make(config, num_peers)`` returning an object with ``step(...)`` that returns new ω."""


@hookspec
def wml_register_evaluators(register):
    """Register evaluators (e.g. ``perplexity``, ``minimal_pairs``): callables that score a
    model or an ensemble and return a dict of metrics."""


@hookspec
def wml_run_event(event, payload):
    """Observe a training run: called with an event name (``run_start``, ``step``,
    ``outer_step``, ``eval``, ``checkpoint``, ``run_end``) and a dict of plain values."""
