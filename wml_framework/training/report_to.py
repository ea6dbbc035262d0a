"""The destinations of the config key ``report_to`` (TensorBoard, Weights & Biases), checked before any
work: each needs its package, which is an optional extra of wml, and its run observer plugin (built
in: ``wml_plugins.report_to``), which writes the run's records there. A run that names one whose
package is missing would otherwise train its teacher for hours and then log nowhere.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..config import WMLConfig
from ..plugin_system.host import PluginHost
from ..plugin_system.validation import ConfigError

__all__ = ["Destination", "DESTINATIONS", "check_report_to"]


@dataclass(frozen=True)
class Destination:
    """A name ``report_to`` accepts: the module it imports and the extra that installs it. Its
    observer plugin (the entry point) has the same name."""

    name: str
    module: str
    extra: str

    @property
    def install(self) -> str:
        return f"pip install 'wml-framework[{self.extra}]'"


DESTINATIONS = {d.name: d for d in (Destination("tensorboard", "tensorboard", "tensorboard"),
                                    Destination("wandb", "wandb", "wandb"))}


def check_report_to(cfg: WMLConfig, host: PluginHost) -> None:
    """Each name of ``cfg.report_to`` has its package installed and its observer loaded; else a
    one-line ConfigError naming the key, the value and what to do."""
    observers = {o["plugin"] for o in host.observers()}
    for name in cfg.report_to:
        where = f"config key 'report_to': value {cfg.report_to!r} names {name!r}"
        dest = DESTINATIONS[name]
        if not _installed(dest.module):
            raise ConfigError(f"{where}, whose package {dest.module!r} is not installed: {dest.install}")
        if name not in observers:
            failed = next((f.line() for f in host.load_failures if f.plugin == name), None)
            why = ("WML_BLOCK_PLUGINS blocks it: unblock it" if name in host.blocked else
                   f"{failed}" if failed else "no entry point registers it: reinstall wml-framework")
            raise ConfigError(f"{where}, whose run observer plugin {name!r} is not loaded; {why}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):      # a parent that fails to import, or a broken module entry
        return False
