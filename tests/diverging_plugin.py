"""A loss plugin that diverges on purpose (NaN from the first step), for tests of runs that fail."""

from __future__ import annotations

from wml_framework import hookimpl
from wml_framework.api import LossResult
from wml_framework.plugin_system.host import PluginHost


class Diverges:
    """A loss that is NaN from the first step: a run with it stops with a TrainingError."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        import torch

        per = torch.stack([z.float().sum() * float("nan") for z in logits])
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class DivergingPlugin:
    @hookimpl
    def wml_register_losses(self, register):
        register("diverges", lambda cfg: Diverges(), help="NaN on purpose")


def diverging_host() -> PluginHost:
    """The installed plugins and ``diverges`` (module-level: a trial's arguments must be picklable)."""
    host = PluginHost()
    host.register(DivergingPlugin(), "diverging_example")
    return host
