"""Plugin loading and the registry of everything plugins provide.

Built-in plugins and third-party ones arrive by the same road: the ``wml`` entry-point group.
The registry is a name table per kind (timm-style ``names`` / ``get`` / ``create``). A plugin
that fails to load, raises in a hook or claims a name another plugin also claims is recorded as a
:class:`PluginFailure` naming the plugin, its package and the hook; the healthy plugins stay
usable, and asking for a name the broken plugin would have provided says why it is missing.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from typing import Any, Mapping, Optional

import pluggy

from .. import hookspecs
from .registration import (KIND_HOOKS, Entry, FailureReason, PluginError, PluginFailure, PluginSettingsError,
                           PluginWarning, UnknownPluginError, check_hooks, hook_in, make_register,
                           option_namespace_conflicts, resolve_options)

__all__ = ["PluginHost", "get_host", "reset_host", "resolve_options", "blocked_plugins",
           "KIND_HOOKS", "Entry", "FailureReason", "PluginError", "PluginFailure", "PluginSettingsError",
           "PluginWarning", "UnknownPluginError"]

ENTRY_POINT_GROUP = "wml"
BLOCK_ENV = "WML_BLOCK_PLUGINS"
IN_CODE = "(registered in code)"


def blocked_plugins() -> set[str]:
    """Plugin names blocked through ``WML_BLOCK_PLUGINS`` (separated by commas or spaces)."""
    return {n for n in re.split(r"[\s,]+", os.environ.get(BLOCK_ENV, "")) if n}


class PluginHost:
    """Owns a pluggy manager, loads entry points and builds the registry on demand.

    One host per run (``WMLTrainer`` makes its own); :func:`get_host` is the command line's."""

    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, str] = {}  # plugin name -> 'distribution version'
        self._tables: Optional[dict[str, dict[str, Entry]]] = None
        self._table_failures: list[PluginFailure] = []
        self.load_failures: list[PluginFailure] = []
        self.notes: list[str] = []
        self.blocked = blocked_plugins()
        for name in self.blocked:
            self.pm.set_blocked(name)
        if load_entry_points:
            self._load_entry_points()

    # -- loading --------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        claims: dict[str, list[tuple[str, Any]]] = {}
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or "?"
            for ep in dist.entry_points:
                if ep.group == ENTRY_POINT_GROUP:
                    claims.setdefault(ep.name, []).append((f"{dist_name} {dist.version}", ep))
        for plugin, found in sorted(claims.items()):
            dists = sorted({d for d, _ in found})
            if plugin in self.blocked:
                continue
            if len(dists) > 1:
                self.load_failures.append(PluginFailure(
                    plugin, " and ".join(dists), "entry point",
                    f"the plugin name {plugin!r} is claimed by {' and '.join(repr(d) for d in dists)}; neither is loaded",
                    reason=FailureReason.NAME_OF_TWO_PACKAGES))
                continue
            dist, ep = found[0]
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - recorded with the plugin's name
                self.load_failures.append(PluginFailure(plugin, dist, "entry point",
                                                        f"cannot load {ep.value!r}: {type(exc).__name__}: {exc}",
                                                        reason=FailureReason.IMPORT))
                continue
            try:
                self.register(module, plugin, distribution=dist)
            except PluginError as exc:
                self.load_failures.append(PluginFailure(plugin, dist, exc.hook, exc.problem,
                                                        reason=FailureReason.REGISTER))

    def register(self, plugin: Any, name: str, *, distribution: str = IN_CODE) -> None:
        """Register a plugin object or module under ``name`` (what an entry point does, by hand).

        Raises :class:`PluginError` for an unknown hook (with a did-you-mean), a hook wrapper, a
        bad hook signature or a name already taken."""
        if self.pm.is_blocked(name):
            return
        if self.pm.get_plugin(name) is not None:
            raise PluginError(name, "register", f"a plugin named {name!r} is already registered "
                                                f"(from {self._dist(name)}); this one comes from {distribution}")
        check_hooks(plugin, name, self.notes)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            hook = getattr(exc, "hook", None) or hook_in(str(exc)) or "register"
            raise PluginError(name, hook, str(exc)) from exc
        self._sources[name] = distribution
        self._tables = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._sources.pop(name, None)
        self._tables = None

    # -- calling hooks, one implementation at a time so errors can name the plugin ---
    def _impls(self, hook_name: str):
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook_name``; return ``(plugin, result)`` pairs."""
        results = []
        for impl in self._impls(hook_name):
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
        self.call_each("wml_run_event", event=str(event), payload=payload)

    # -- the registry -----------------------------------------------------------------
    def _build_tables(self) -> dict[str, dict[str, Entry]]:
        tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KIND_HOOKS}
        claims: dict[tuple[str, str], list[Entry]] = {}
        failures: list[PluginFailure] = []
        for kind, hook_name in KIND_HOOKS.items():
            for impl in self._impls(hook_name):
                plugin, dist = impl.plugin_name, self._dist(impl.plugin_name)
                made: list[Entry] = []
                register = make_register(kind, hook_name, plugin, dist, made)
                try:
                    impl.function(register=register)
                except Exception as exc:  # noqa: BLE001 - recorded, the other plugins stay usable
                    problem = exc.problem if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                    failures.append(PluginFailure(plugin, dist, hook_name, problem,
                                                  tuple((kind, e.name) for e in made), FailureReason.HOOK))
                    continue
                for entry in made:
                    claims.setdefault((kind, entry.name), []).append(entry)
        for (kind, name), entries in claims.items():
            if len(entries) == 1:
                tables[kind][name] = entries[0]
                continue
            entries = sorted(entries, key=lambda e: e.plugin)
            who = " and ".join(f"plugin {e.plugin!r} ({e.distribution})" for e in entries)
            for e in entries:
                failures.append(PluginFailure(e.plugin, e.distribution, KIND_HOOKS[kind],
                                              f"{kind} {name!r} is registered by {who}; neither is used",
                                              ((kind, name),), FailureReason.NAME_OF_TWO_PLUGINS))
        broken = {f.plugin for f in failures if f.reason.breaks_plugin}
        for table in tables.values():     # a plugin that failed in one hook is not used in its others either
            for name in [n for n, e in table.items() if e.plugin in broken]:
                del table[name]
        failures.extend(option_namespace_conflicts(tables))
        self._table_failures = failures
        return tables

    def failure_note(self, kind: str, name: str) -> str:
        """'; not loaded: …' naming the broken plugins that might have provided ``name`` (or '')."""
        related, seen = [], set()
        for f in self.failures:
            if ((kind, name) in f.names or not f.names) and f.problem not in seen:
                seen.add(f.problem)
                related.append(f.line())
        return f"; not loaded: {'; '.join(related)}" if related else ""

    def _dist(self, plugin: str) -> str:
        return self._sources.get(plugin, IN_CODE)

    @property
    def tables(self) -> dict[str, dict[str, Entry]]:
        if self._tables is None:
            self._tables = self._build_tables()
        return self._tables

    @property
    def failures(self) -> list[PluginFailure]:
        """Every plugin or registration that could not be used: load errors, raising hooks,
        names claimed twice (building the tables first)."""
        self.tables  # noqa: B018 - builds them, collecting the failures
        return [*self.load_failures, *self._table_failures]

    def names(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def entries(self, kind: str) -> list[Entry]:
        return [self._table(kind)[n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Entry:
        table = self._table(kind)
        if name not in table:
            raise UnknownPluginError(kind, name, sorted(table), self.failure_note(kind, name))
        return table[name]

    def create(self, kind: str, name: str, *args: Any, options: Optional[Mapping[str, Any]] = None,
               **kwargs: Any) -> Any:
        """Call the registered factory with ``args``, ``kwargs`` and the plugin's declared options
        (``options`` validated, defaults filled in); errors name the plugin that provided it."""
        entry = self.get(kind, name)
        values = resolve_options(entry, options or {})
        try:
            return entry.obj(*args, **kwargs, **values)
        except PluginError:
            raise
        except ValueError as exc:
            raise PluginSettingsError(entry.plugin, KIND_HOOKS[kind], f"creating {kind} {name!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a factory that fails is the plugin's error
            raise PluginError(entry.plugin, KIND_HOOKS[kind], f"creating {kind} {name!r}: {type(exc).__name__}: {exc}") from exc

    def option_specs(self) -> dict[str, Entry]:
        """Option namespace (the registered name) -> the entry that declares options there."""
        return {e.name: e for kind in KIND_HOOKS for e in self.entries(kind) if e.options}

    def _table(self, kind: str) -> dict[str, Entry]:
        if kind not in KIND_HOOKS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KIND_HOOKS)}")
        return self.tables[kind]


# ----------------------------------------------------------------------------- the process-wide host

_HOST: Optional[PluginHost] = None


def get_host() -> PluginHost:
    """The process-wide plugin host (the command line's), loaded from entry points on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def reset_host() -> None:
    """Forget the loaded plugins (after installing a package at run time)."""
    global _HOST
    _HOST = None
