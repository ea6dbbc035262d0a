"""wml: compress a language model into a family of peers by weighted mutual learning.

The Python API in one import::

    from wml_framework import load_config, WMLTrainer
    trainer = WMLTrainer.from_config(load_config(overrides={"max_steps": 50}), "runs/demo")
    trainer.train(); trainer.evaluate()

Heavy names (torch-backed) are imported on first use, so ``wml --help`` stays fast.
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("wml-framework")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from . import _moved  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402  - the one name plugin authors need

_moved.install()  # import paths from before the subpackages still work, with a warning

#: exported name -> (module, attribute)
_LAZY = {
    "WMLConfig": ("config", "WMLConfig"),
    "load_config": ("config", "load"),
    "ConfigError": ("config", "ConfigError"),
    "WMLTrainer": ("runner", "WMLTrainer"),
    "TrainerCallback": ("training.callbacks", "TrainerCallback"),
    "TrainerControl": ("training.callbacks", "TrainerControl"),
    "TrainerState": ("training.callbacks", "TrainerState"),
    "Event": ("api", "Event"),
    "evaluate": ("evaluation.scoring", "evaluate"),
    "PluginHost": ("plugin_system.host", "PluginHost"),
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(_import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    if name in _moved.MOVED:  # ``from wml_framework import heldout``, the old way
        return _moved.load(name)
    raise AttributeError(f"module 'wml_framework' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
