"""The plugin objects of one run (loss, updater, initializer), made and checked before any work, and
the run observers ``report_to`` names: a factory that rejects its settings, or a logger whose package
is missing, fails before the teacher trains, not hours later."""

from __future__ import annotations

from dataclasses import dataclass

from ..api import Loss, Objective, Updater
from ..config import WMLConfig
from ..evaluation.scoring import make_evaluators
from ..plugin_system.guards import (
    checked_initializer,
    checked_loss,
    checked_objective,
    checked_updater,
)
from ..plugin_system.host import PluginHost
from .report_to import check_report_to
from .teacher import TEACHER_LOSS, TEACHER_UPDATER

__all__ = ["RunPlugins", "TeacherPluginsMissing", "check_teacher_plugins", "create_plugins"]


@dataclass
class RunPlugins:
    """The plugin objects of one run, made before any work."""

    loss: Loss
    updater: Updater
    initializer: object
    objective: Objective


def create_plugins(cfg: WMLConfig, host: PluginHost) -> RunPlugins:
    """Loss, updater, initializer and objective of ``cfg``, with their options; a factory that
    rejects its arguments fails here, before the teacher is trained."""
    if not cfg.teacher:                  # the teacher's own loss and updater, before its training is due
        check_teacher_plugins(host)
    options = cfg.plugin_options
    loss = host.create("loss", cfg.loss, cfg, options=options(cfg.loss))
    updater = host.create("updater", cfg.updater, cfg, cfg.peer_count, options=options(cfg.updater))
    initializer = host.create("initializer", cfg.init, cfg, options=options(cfg.init))
    objective = host.create("objective", cfg.objective, cfg, options=options(cfg.objective))
    make_evaluators(cfg, host.names("evaluator"), host, log=lambda m: None)  # their settings fail here, not after training
    check_report_to(cfg, host)        # a missing package fails here, not once the teacher is trained
    return RunPlugins(checked_loss(loss, host.get("loss", cfg.loss)),
                      checked_updater(updater, host.get("updater", cfg.updater), cfg.peer_count),
                      checked_initializer(initializer, host.get("initializer", cfg.init)),
                      checked_objective(objective, host.get("objective", cfg.objective)))


class TeacherPluginsMissing(ValueError):
    """The plugins a run trains its teacher with are not loaded (blocked, or not installed)."""


def check_teacher_plugins(host: PluginHost) -> None:
    """The teacher is trained by the same loop as the peers, with loss ``ce`` and updater ``uniform``:
    when a block list (or a broken install) removed them, say so in one line, before any work."""
    for kind, name in (("loss", TEACHER_LOSS), ("updater", TEACHER_UPDATER)):
        if name not in host.names(kind):
            raise TeacherPluginsMissing(
                f"the teacher is trained with {kind} {name!r}, which is not loaded{host.failure_note(kind, name)}; "
                f"unblock the plugin that registers it (WML_BLOCK_PLUGINS), or give a trained teacher with --teacher")
