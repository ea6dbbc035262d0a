"""Plugin loading and the registry of everything plugins provide.

Built-in plugins and third-party ones arrive by the same road: the ``wml`` entry-point
group. The registry is a name table per kind (timm-style ``list_plugins`` / ``get``);
a plugin that fails, or two that claim one name, produce an error naming the plugin
and the hook instead of a silent override.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "wml"
BLOCK_ENV = "WML_BLOCK_PLUGINS"

#: registry kind -> the hook that fills it
KIND_HOOKS: dict[str, str] = {
    "family": "wml_register_model_families",
    "initializer": "wml_register_initializers",
    "loss": "wml_register_losses",
    "updater": "wml_register_updaters",
    "evaluator": "wml_register_evaluators",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


class PluginError(RuntimeError):
    """A plugin misbehaved; the message names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, problem: str):
        self.plugin, self.hook, self.problem = plugin, hook, problem
        super().__init__(f"plugin {plugin!r} failed in hook {hook!r}: {problem}")


class UnknownPluginError(KeyError, ValueError):
    """A name that no registered plugin provides; lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


@dataclass(frozen=True)
class Entry:
    """One registered thing: which plugin gave it, and from which distribution."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    help: str = ""


def blocked_plugins() -> set[str]:
    """Plugin names blocked through the ``WML_BLOCK_PLUGINS`` variable (comma separated)."""
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


class PluginHost:
    """Owns the pluggy manager, loads entry points, and builds the registry on demand."""

    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, str] = {}  # plugin name -> 'distribution version'
        self._tables: dict[str, dict[str, Entry]] | None = None
        for name in blocked_plugins():
            self.pm.set_blocked(name)
        if load_entry_points:
            self._load_entry_points()

    # -- loading --------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        seen: dict[str, str] = {}
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or "?"
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                if ep.name in seen and seen[ep.name] != dist_name:
                    raise PluginError(
                        ep.name, "entry point",
                        f"the plugin name is claimed by both {seen[ep.name]!r} and {dist_name!r}",
                    )
                if ep.name in seen or self.pm.is_blocked(ep.name):
                    continue
                seen[ep.name] = dist_name
                try:
                    module = ep.load()
                except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's name
                    raise PluginError(ep.name, "entry point", f"cannot load {ep.value!r}: {exc!r}") from exc
                self.register(module, ep.name, distribution=f"{dist_name} {dist.version}")

    def register(self, plugin: Any, name: str, *, distribution: str = "(registered in code)") -> None:
        """Register a plugin object or module under ``name`` (what entry points do, by hand)."""
        if self.pm.is_blocked(name):
            return
        if self.pm.get_plugin(name) is not None:
            raise PluginError(name, "register", "a plugin of this name is already registered")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a misspelled hook name is an error now, not silence later
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            raise PluginError(name, "register", str(exc)) from exc
        self._sources[name] = distribution
        self._tables = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._sources.pop(name, None)
        self._tables = None

    # -- calling hooks, one implementation at a time so errors can name the plugin ---
    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook_name``; return ``(plugin, result)`` pairs."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            args = {k: v for k, v in kwargs.items() if k in impl.argnames}
            try:
                results.append((impl.plugin_name, impl.function(**args)))
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with plugin and hook named
                raise PluginError(impl.plugin_name, hook_name, f"{type(exc).__name__}: {exc}") from exc
        return results

    def emit(self, event: str, payload: dict) -> None:
        """Broadcast a run event to every ``wml_run_event`` implementation."""
        self.call_each("wml_run_event", event=event, payload=payload)

    # -- the registry -----------------------------------------------------------------
    def _build_tables(self) -> dict[str, dict[str, Entry]]:
        tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KIND_HOOKS}
        for kind, hook_name in KIND_HOOKS.items():
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                plugin = impl.plugin_name
                register = _make_register(kind, hook_name, plugin, tables[kind], self._dist(plugin))
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise PluginError(plugin, hook_name, f"{type(exc).__name__}: {exc}") from exc
        return tables

    def _dist(self, plugin: str) -> str:
        return self._sources.get(plugin, "(registered in code)")

    @property
    def tables(self) -> dict[str, dict[str, Entry]]:
        if self._tables is None:
            self._tables = self._build_tables()
        return self._tables

    def names(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def entries(self, kind: str) -> list[Entry]:
        return [self._table(kind)[n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Entry:
        table = self._table(kind)
        if name not in table:
            raise UnknownPluginError(kind, name, sorted(table))
        return table[name]

    def create(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered factory; errors name the plugin that provided it."""
        entry = self.get(kind, name)
        try:
            return entry.obj(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            raise PluginError(entry.plugin, KIND_HOOKS[kind], f"creating {kind} {name!r}: {exc}") from exc

    def _table(self, kind: str) -> dict[str, Entry]:
        if kind not in KIND_HOOKS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KIND_HOOKS)}")
        return self.tables[kind]


def _make_register(kind: str, hook: str, plugin: str, table: dict[str, Entry], dist: str) -> Callable:
    def register(name: str, obj: Any, *, help: str = "") -> None:  # noqa: A002 - click-like name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(plugin, hook, f"invalid {kind} name {name!r} (lowercase letters, digits, '_', '-')")
        if obj is None or not callable(obj):
            raise PluginError(plugin, hook, f"{kind} {name!r} must be callable, got {obj!r}")
        if name in table:
            other = table[name].plugin
            raise PluginError(plugin, hook, f"{kind} {name!r} is already provided by plugin {other!r}")
        doc = help or (inspect.getdoc(obj) or "").split("\n")[0]
        table[name] = Entry(kind, name, obj, plugin, dist, doc)

    return register


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded from entry points on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def reset_host() -> None:
    """Forget the loaded plugins (tests, or after installing a package at run time)."""
    global _HOST
    _HOST = None


def list_plugins(kind: str) -> list[str]:
    return get_host().names(kind)


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    return get_host().create(kind, name, *args, **kwargs)
