"""What a plugin may register, checked as it registers: names, factories, options, reference points
and hook implementations; and the error and record types that name the plugin at fault.

Why apart from the host: these rules are the contract of ``register(...)``; the host only loads
plugins and keeps the tables.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from .. import hookspecs
from ..api import Option, ReferencePoint
from .validation import SUPPORTED_TYPES, ConfigError, close_matches, validate_value

__all__ = ["KIND_HOOKS", "HOOK_NAMES", "RESERVED_EVALUATOR_NAMES", "PluginError", "PluginSettingsError",
           "PluginWarning", "UnknownPluginError", "FailureReason", "PluginFailure", "Entry", "make_register",
           "resolve_options", "option_namespace_conflicts", "hook_in", "check_hooks"]

#: registry kind -> the hook that fills it
KIND_HOOKS: dict[str, str] = {
    "family": "wml_register_model_families",
    "initializer": "wml_register_initializers",
    "loss": "wml_register_losses",
    "updater": "wml_register_updaters",
    "evaluator": "wml_register_evaluators",
    "objective": "wml_register_objectives",
}
HOOK_NAMES = sorted([*KIND_HOOKS.values(), "wml_run_event"])
#: names an evaluator may not take: its result is stored under its name beside these keys of eval.json
RESERVED_EVALUATOR_NAMES = frozenset({"models", "settings", "path", "kind", "created", "peer_names", "omega",
                                      "omega_source", "champion", "display", "role", "members", "parameters", "seconds"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class PluginError(RuntimeError):
    """A plugin misbehaved; the message names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, problem: str, *, package: str = "", where: str = ""):
        self.plugin, self.hook, self.problem = plugin, hook, problem
        if not where:
            where = "in " + (f"hook {hook!r}" if hook.startswith("wml_") or hook in ("register", "entry point") else hook)
        origin = f" ({package})" if package else ""
        super().__init__(f"plugin {plugin!r}{origin} failed {where}: {problem}")

    @classmethod
    def creating(cls, entry: "Entry", problem: str) -> "PluginError":
        """A factory that raised: named as what failed (``creating loss 'x'``), not as the
        registration hook, which ran long before and succeeded."""
        return cls(entry.plugin, f"creating {entry.kind} {entry.name!r}", problem, package=entry.distribution,
                   where=f"creating {entry.kind} {entry.name!r}")


class PluginSettingsError(PluginError):
    """A plugin's factory rejected its settings (a ``ValueError``): usually the user's input, so the
    command line reports it like a bad configuration value (exit 2)."""


class PluginWarning(UserWarning):
    """Something in a plugin that is probably a mistake but breaks nothing (an unmarked hook)."""


class UnknownPluginError(KeyError, ValueError):
    """A name that no registered plugin provides; lists the valid ones (and broken plugins)."""

    def __init__(self, kind: str, name: str, valid: list[str], note: str = ""):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid) or '(none registered)'}{note}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class FailureReason(str, enum.Enum):
    """Why a plugin, or one of its registrations, could not be used."""

    #: two distributions claim one plugin name: neither is loaded
    NAME_OF_TWO_PACKAGES = "plugin name of two packages"
    #: the module cannot be imported
    IMPORT = "import"
    #: registering the module was refused (an unknown hook, a hook wrapper, a bad signature)
    REGISTER = "register"
    #: a registration hook raised
    HOOK = "hook"
    #: one name of one kind registered by two plugins: neither registration is used, both plugins
    #: stay healthy otherwise (the one failure that does not break the plugin)
    NAME_OF_TWO_PLUGINS = "name of two plugins"
    #: two things of different kinds declare options under one name: neither is used
    OPTION_NAMESPACE = "option namespace"
    #: a third-party entry point named like a built-in plugin of wml: the built-in is loaded, it is not
    PLUGIN_NAME_OF_BUILTIN = "plugin name of a built-in"
    #: a third-party registration of a name a built-in registers: the built-in keeps the name, the
    #: newcomer's other names stay usable
    NAME_OF_BUILTIN = "name of a built-in"

    @property
    def breaks_plugin(self) -> bool:
        """Whether the plugin is kept out of its other hooks too: false when only one of its names
        could not be used (taken by another plugin, a built-in, or an option namespace), and for an
        entry point refused its built-in's name (the plugin of that name is the built-in, unharmed)."""
        return self not in (FailureReason.NAME_OF_TWO_PLUGINS, FailureReason.NAME_OF_BUILTIN,
                            FailureReason.OPTION_NAMESPACE, FailureReason.PLUGIN_NAME_OF_BUILTIN)

    @property
    def shared(self) -> bool:
        """Whether one problem is recorded for each plugin involved (a name they all claim): it is
        reported once."""
        return self in (FailureReason.NAME_OF_TWO_PLUGINS, FailureReason.OPTION_NAMESPACE)

    @property
    def skips_plugin(self) -> bool:
        """Whether the whole plugin is left out (so a warning says it is skipped); the other
        reasons say in their own words what is not used."""
        return self in (FailureReason.IMPORT, FailureReason.REGISTER, FailureReason.HOOK)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin (or one of its registrations) that could not be used, and why (``reason``)."""

    plugin: str
    distribution: str
    hook: str
    problem: str
    names: tuple = ()  # (kind, name) pairs it made unusable, when known
    reason: FailureReason = FailureReason.HOOK

    def line(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution}) failed in {self.hook!r}: {self.problem}"

    def warning(self) -> str:
        """The line a command prints for it: :meth:`line`, and whether the plugin is skipped."""
        return self.line() + ("; the plugin is skipped" if self.reason.skips_plugin else "")


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


def make_register(kind: str, hook: str, plugin: str, dist: str, made: list) -> Callable:
    def register(name: str, obj: Any, *, help: str = "", options: Sequence[Option] = (),  # noqa: A002
                 references: Sequence[ReferencePoint] = ()) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(plugin, hook, f"invalid {kind} name {name!r} (lowercase letters, digits, '_', '-')")
        if obj is None or not callable(obj):
            raise PluginError(plugin, hook, f"{kind} {name!r} must be callable, got {obj!r}")
        if kind == "evaluator" and name in RESERVED_EVALUATOR_NAMES:
            raise PluginError(plugin, hook, f"evaluator name {name!r} is reserved (eval.json uses it for something "
                                            f"else); reserved: {', '.join(sorted(RESERVED_EVALUATOR_NAMES))}")
        if any(e.name == name for e in made):
            raise PluginError(plugin, hook, f"{kind} {name!r} is registered twice by this plugin")
        options = tuple(_check_options(plugin, hook, kind, name, obj, options))
        for ref in references:
            if not isinstance(ref, ReferencePoint):
                raise PluginError(plugin, hook, f"{kind} {name!r}: references must be ReferencePoint objects, got {ref!r}")
            unknown = _undeclared_options(ref.settings, name, options)
            if unknown:
                raise PluginError(plugin, hook, f"{kind} {name!r}: reference point {ref.name!r} sets undeclared option(s) {unknown}")
        doc = help or (inspect.getdoc(obj) or "").split("\n")[0]
        made.append(Entry(kind, name, obj, plugin, dist, doc, options, tuple(references)))

    return register


def _undeclared_options(settings: Mapping[str, Any], name: str, options: Sequence[Option]) -> list[str]:
    """Keys of a reference point's settings written as options of this plugin (``NAME.KEY``) that
    it does not declare. A bare key is either a declared option or a config key; which config keys
    exist is the configuration's business, so ``wml verify`` checks those when it builds the config
    (the plugin system does not import the configuration: the configuration is built on it)."""
    declared = {o.key for o in options}
    return [k for k in settings if "." in k and (not k.startswith(name + ".") or k.split(".", 1)[1] not in declared)]


def _check_options(plugin: str, hook: str, kind: str, name: str, obj: Any, options: Sequence[Option]):
    """Each option is an :class:`Option` of a supported type whose default is valid, and the
    factory accepts it as a keyword argument."""
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
    keys = {o.key for o in entry.options}
    for key in given:
        if key not in keys:
            raise ConfigError(f"unknown option {entry.name}.{key}{close_matches(key, keys)} "
                              f"({entry.kind} {entry.name!r} declares: {', '.join(sorted(keys)) or 'none'})")
    return {o.key: validate_value(f"{entry.name}.{o.key}", o, given[o.key]) if o.key in given else o.default
            for o in entry.options}


def option_namespace_conflicts(tables: dict[str, dict[str, Entry]]) -> list[PluginFailure]:
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
                                         f"option namespace {name!r} is declared by {who}", ((e.kind, e.name),),
                                         FailureReason.OPTION_NAMESPACE))
                del tables[e.kind][e.name]
    return out


def hook_in(message: str) -> Optional[str]:
    m = re.search(r"hook '?(wml_[a-z_]+)", message)
    return m.group(1) if m else None


def check_hooks(plugin: Any, name: str, notes: list[str]) -> None:
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
