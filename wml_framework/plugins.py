"""Plugin loading and the registry of everything plugins provide.

Built-in plugins and third-party ones arrive by the same road: the ``wml`` entry-point group.
The registry is a name table per kind (timm-style ``names`` / ``get`` / ``create``). A plugin
that fails to load, raises in a hook or claims a name another plugin also claims is recorded as a
:class:`PluginFailure` naming the plugin, its package and the hook; the healthy plugins stay
usable, and asking for a name the broken plugin would have provided says why it is missing.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, Optional, Sequence

import pluggy

from . import hookspecs
from .api import Option, ReferencePoint

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
HOOK_NAMES = sorted([*KIND_HOOKS.values(), "wml_run_event"])
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")
IN_CODE = "(registered in code)"


class PluginError(RuntimeError):
    """A plugin misbehaved; the message names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, problem: str):
        self.plugin, self.hook, self.problem = plugin, hook, problem
        super().__init__(f"plugin {plugin!r} failed in hook {hook!r}: {problem}")


class PluginWarning(UserWarning):
    """Something in a plugin that is probably a mistake but breaks nothing (an unmarked hook)."""


class UnknownPluginError(KeyError, ValueError):
    """A name that no registered plugin provides; lists the valid ones (and broken plugins)."""

    def __init__(self, kind: str, name: str, valid: list[str], failures: Sequence["PluginFailure"] = ()):
        self.kind, self.name, self.valid = kind, name, valid
        text = f"unknown {kind} {name!r}; valid: {', '.join(valid) or '(none registered)'}"
        if failures:
            text += "; not loaded: " + "; ".join(f.line() for f in failures)
        super().__init__(text)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin (or one of its registrations) that could not be used, and why."""

    plugin: str
    distribution: str
    hook: str
    problem: str
    names: tuple = ()  # (kind, name) pairs it made unusable, when known

    def line(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution}) failed in {self.hook!r}: {self.problem}"


@dataclass(frozen=True)
class Entry:
    """One registered thing: which plugin gave it, from which distribution, with its declared
    options and reference points."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    help: str = ""
    options: tuple = ()
    references: tuple = ()

    def option(self, key: str) -> Option:
        for opt in self.options:
            if opt.key == key:
                return opt
        raise KeyError(key)


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
                    f"the plugin name {plugin!r} is claimed by {' and '.join(repr(d) for d in dists)}; neither is loaded"))
                continue
            dist, ep = found[0]
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - recorded with the plugin's name
                self.load_failures.append(PluginFailure(plugin, dist, "entry point",
                                                        f"cannot load {ep.value!r}: {type(exc).__name__}: {exc}"))
                continue
            try:
                self.register(module, plugin, distribution=dist)
            except PluginError as exc:
                self.load_failures.append(PluginFailure(plugin, dist, exc.hook, exc.problem))

    def register(self, plugin: Any, name: str, *, distribution: str = IN_CODE) -> None:
        """Register a plugin object or module under ``name`` (what an entry point does, by hand).

        Raises :class:`PluginError` for an unknown hook (with a did-you-mean), a hook wrapper, a
        bad hook signature or a name already taken."""
        if self.pm.is_blocked(name):
            return
        if self.pm.get_plugin(name) is not None:
            raise PluginError(name, "register", f"a plugin named {name!r} is already registered "
                                                f"(from {self._dist(name)}); this one comes from {distribution}")
        _check_hooks(plugin, name, self.notes)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            hook = getattr(exc, "hook", None) or _hook_in(str(exc)) or "register"
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
                register = _make_register(kind, hook_name, plugin, dist, made)
                try:
                    impl.function(register=register)
                except Exception as exc:  # noqa: BLE001 - recorded, the other plugins stay usable
                    problem = exc.problem if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                    failures.append(PluginFailure(plugin, dist, hook_name, problem,
                                                  tuple((kind, e.name) for e in made)))
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
                                              ((kind, name),)))
        failures.extend(_option_namespace_conflicts(tables))
        self._table_failures = failures
        return tables

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
            related, seen = [], set()
            for f in self.failures:
                if ((kind, name) in f.names or not f.names) and f.problem not in seen:
                    seen.add(f.problem)
                    related.append(f)
            raise UnknownPluginError(kind, name, sorted(table), related)
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
        except Exception as exc:  # noqa: BLE001 - a factory that rejects its input is the plugin's error
            raise PluginError(entry.plugin, KIND_HOOKS[kind], f"creating {kind} {name!r}: {type(exc).__name__}: {exc}") from exc

    def option_specs(self) -> dict[str, Entry]:
        """Option namespace (the registered name) -> the entry that declares options there."""
        return {e.name: e for kind in KIND_HOOKS for e in self.entries(kind) if e.options}

    def _table(self, kind: str) -> dict[str, Entry]:
        if kind not in KIND_HOOKS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KIND_HOOKS)}")
        return self.tables[kind]


# ----------------------------------------------------------------------------- registration

def _make_register(kind: str, hook: str, plugin: str, dist: str, made: list) -> Callable:
    def register(name: str, obj: Any, *, help: str = "", options: Sequence[Option] = (),  # noqa: A002
                 references: Sequence[ReferencePoint] = ()) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(plugin, hook, f"invalid {kind} name {name!r} (lowercase letters, digits, '_', '-')")
        if obj is None or not callable(obj):
            raise PluginError(plugin, hook, f"{kind} {name!r} must be callable, got {obj!r}")
        if any(e.name == name for e in made):
            raise PluginError(plugin, hook, f"{kind} {name!r} is registered twice by this plugin")
        options = tuple(_check_options(plugin, hook, kind, name, obj, options))
        for ref in references:
            if not isinstance(ref, ReferencePoint):
                raise PluginError(plugin, hook, f"{kind} {name!r}: references must be ReferencePoint objects, got {ref!r}")
            unknown = [k for k in ref.settings if _is_option_key(k, name) and _option_key(k, name) not in {o.key for o in options}]
            if unknown:
                raise PluginError(plugin, hook, f"{kind} {name!r}: reference point {ref.name!r} sets undeclared option(s) {unknown}")
        doc = help or (inspect.getdoc(obj) or "").split("\n")[0]
        made.append(Entry(kind, name, obj, plugin, dist, doc, options, tuple(references)))

    return register


def _is_option_key(key: str, name: str) -> bool:
    return "." in key or key not in _config_keys()


def _option_key(key: str, name: str) -> str:
    return key.split(".", 1)[1] if key.startswith(name + ".") else key


def _config_keys() -> set:
    from .config import FIELDS

    return set(FIELDS)


def _check_options(plugin: str, hook: str, kind: str, name: str, obj: Any, options: Sequence[Option]):
    """Each option is an :class:`Option` of a supported type whose default is valid, and the
    factory accepts it as a keyword argument."""
    from .config import SUPPORTED_TYPES, ConfigError, validate_value

    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    seen = set()
    for opt in options:
        if not isinstance(opt, Option):
            raise PluginError(plugin, hook, f"{kind} {name!r}: options must be Option objects, got {opt!r}")
        if not _OPTION_RE.match(opt.key) or opt.key in seen:
            raise PluginError(plugin, hook, f"{kind} {name!r}: option key {opt.key!r} is invalid or repeated")
        seen.add(opt.key)
        if opt.type not in SUPPORTED_TYPES:
            raise PluginError(plugin, hook, f"{kind} {name!r}: option {opt.key!r} has unsupported type "
                                            f"{opt.type.__name__} (use int, float, str, bool or list)")
        try:
            validate_value(f"{name}.{opt.key}", opt, opt.default)
        except ConfigError as exc:
            raise PluginError(plugin, hook, f"{kind} {name!r}: the default of option {opt.key!r} is invalid: {exc}") from None
        if params and not takes_any and opt.key not in params:
            raise PluginError(plugin, hook, f"{kind} {name!r}: option {opt.key!r} is declared, but the factory "
                                            f"{getattr(obj, '__name__', obj)!r} takes no keyword argument {opt.key!r}")
        yield opt


def resolve_options(entry: Entry, given: Mapping[str, Any]) -> dict:
    """The entry's options: ``given`` values validated (unknown keys refused), defaults for the rest."""
    from .config import ConfigError, close_matches, validate_value

    keys = {o.key for o in entry.options}
    for key in given:
        if key not in keys:
            raise ConfigError(f"unknown option {entry.name}.{key}{close_matches(key, keys)} "
                              f"({entry.kind} {entry.name!r} declares: {', '.join(sorted(keys)) or 'none'})")
    return {o.key: validate_value(f"{entry.name}.{o.key}", o, given[o.key]) if o.key in given else o.default
            for o in entry.options}


def _option_namespace_conflicts(tables: dict[str, dict[str, Entry]]) -> list[PluginFailure]:
    owners: dict[str, list[Entry]] = {}
    for table in tables.values():
        for entry in table.values():
            if entry.options:
                owners.setdefault(entry.name, []).append(entry)
    out = []
    for name, entries in owners.items():
        if len(entries) > 1:
            who = " and ".join(f"{e.kind} {e.name!r} of plugin {e.plugin!r}" for e in entries)
            for e in entries:
                out.append(PluginFailure(e.plugin, e.distribution, KIND_HOOKS[e.kind],
                                         f"option namespace {name!r} is declared by {who}", ((e.kind, e.name),)))
                del tables[e.kind][e.name]
    return out


def _hook_in(message: str) -> Optional[str]:
    m = re.search(r"hook '?(wml_[a-z_]+)", message)
    return m.group(1) if m else None


def _check_hooks(plugin: Any, name: str, notes: list[str]) -> None:
    """Before pluggy sees the plugin: unknown hook names (with a did-you-mean), wrappers (which
    the host does not run: it calls each implementation itself, so errors can name the plugin),
    and functions that look like hooks but lack ``@hookimpl`` (a warning: pluggy ignores them)."""
    marker = f"{hookspecs.PROJECT}_impl"
    for attr in dir(plugin):
        if not attr.startswith("wml_"):
            continue
        try:
            fn = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 - a property that raises is not a hook
            continue
        if not callable(fn):
            continue
        opts = getattr(fn, marker, None)
        hook = (opts or {}).get("specname") or attr
        close = difflib.get_close_matches(hook, HOOK_NAMES, n=1, cutoff=0.75)
        if opts is None:
            if attr in HOOK_NAMES or close:
                target = attr if attr in HOOK_NAMES else close[0]
                note = (f"plugin {name!r}: {attr}() is not marked @hookimpl and is ignored"
                        + ("" if attr == target else f" (did you mean the hook {target!r}?)"))
                notes.append(note)
                warnings.warn(note, PluginWarning, stacklevel=4)
            continue
        if hook not in HOOK_NAMES:
            hint = f"; did you mean {close[0]!r}?" if close else f"; hooks: {', '.join(HOOK_NAMES)}"
            raise PluginError(name, hook, f"unknown hook {hook!r}{hint}")
        if opts.get("hookwrapper") or opts.get("wrapper"):
            raise PluginError(name, hook, "hook wrappers are not supported by wml (each implementation is "
                                          "called on its own); implement the hook plainly")


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


def list_plugins(kind: str, host: Optional[PluginHost] = None) -> list[str]:
    return (host or get_host()).names(kind)
