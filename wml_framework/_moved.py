"""Import paths from before the core was grouped into subpackages keep working, with a warning.

``from wml_framework.heldout import block_starts`` (documented for plugin authors until 0.1)
still imports; it names the new path in a :class:`DeprecationWarning`. The old name is a thin
module that hands every attribute over to the new one, so the real module keeps its own identity
(which also means that ``monkeypatch.setattr`` on an old path patches nothing: patch the new one).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "install"]

#: old module (under wml_framework) -> where it lives now
MOVED = {
    **{m: f"runtime.{m}" for m in ("atomic", "checkpoint", "run_lock", "run_layout", "interrupts", "distributed",
                                   "threads", "placement", "progress")},
    **{m: f"text.{m}" for m in ("corpus", "tokenizer", "tokens")},
    **{m: f"evaluation.{m}" for m in ("heldout", "minimal_pairs", "models", "run_reader")},
    **{m: f"training.{m}" for m in ("teacher", "peers", "schedules", "callbacks", "adam_precond", "attention")},
    "plugins": "plugin_system.host",
    "registration": "plugin_system.registration",
    "guards": "plugin_system.guards",
    "validation": "plugin_system.validation",
    "trainer": "training.loop",
}
#: old modules whose names were split between two new ones: where the rest went
SPLIT = {"teacher": ("training.families",)}
_PACKAGE = __name__.rpartition(".")[0]


def new_name(old: str) -> str:
    """The module's path now (``heldout`` -> ``wml_framework.evaluation.heldout``)."""
    return f"{_PACKAGE}.{MOVED[old]}"


def load(old: str) -> types.ModuleType:
    """The module that stands for ``wml_framework.<old>``: every attribute read from the new one."""
    full = f"{_PACKAGE}.{old}"
    if full in sys.modules:
        return sys.modules[full]
    warnings.warn(f"{full} moved to {new_name(old)}; import it from there (the old path will be removed)",
                  DeprecationWarning, stacklevel=3)
    targets = [importlib.import_module(new_name(old)),
               *(importlib.import_module(f"{_PACKAGE}.{rest}") for rest in SPLIT.get(old, ()))]
    alias = types.ModuleType(full, targets[0].__doc__)

    def read(name: str):                                  # PEP 562: reads go to the real modules
        for target in targets:
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"module {full!r} (now {new_name(old)}) has no attribute {name!r}")

    alias.__getattr__ = read
    alias.__dir__ = lambda: sorted({n for target in targets for n in dir(target)})
    alias.__all__ = [n for target in targets for n in getattr(target, "__all__", ())]
    sys.modules[full] = alias
    return alias


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package == _PACKAGE and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return load(spec.name.rpartition(".")[2])

    def exec_module(self, module):
        """Nothing to run: the alias reads from the real module."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the normal finders: a real module wins)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
