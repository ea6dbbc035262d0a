"""Plugin loading and the registry of everything plugins provide.

Built-in plugins and third-party ones arrive by the same road: the ``wml`` entry-point group.
The registry is a name table per kind (timm-style ``names`` / ``get`` / ``create``). A plugin
that fails to load, raises in a hook or claims a name another plugin also claims is recorded as a
:class:`PluginFailure` naming the plugin, its package and the hook; the healthy plugins stay
usable, and asking for a name the broken plugin would have provided says why it is missing. A
built-in keeps its names (a newcomer's claim is refused); a name two third-party plugins claim
goes to neither (:meth:`PluginHost._settle`).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import traceback
from importlib import metadata
from typing import Any, Callable, Mapping, Optional

import pluggy

from .. import hookspecs
from .registration import (
    KIND_HOOKS,
    Entry,
    FailureReason,
    PluginError,
    PluginFailure,
    PluginSettingsError,
    PluginWarning,
    UnknownPluginError,
    check_hooks,
    hook_in,
    make_register,
    option_namespace_conflicts,
    resolve_options,
)
from .validation import close_matches

__all__ = ["PluginHost", "get_host", "reset_host", "resolve_options", "blocked_plugins",
           "KIND_HOOKS", "Entry", "FailureReason", "PluginError", "PluginFailure", "PluginSettingsError",
           "PluginWarning", "UnknownPluginError"]

ENTRY_POINT_GROUP = "wml"
BLOCK_ENV = "WML_BLOCK_PLUGINS"
IN_CODE = "(registered in code)"
#: the distribution whose entry points are the built-in plugins (they keep their names)
FRAMEWORK_DISTRIBUTION = "wml-framework"


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
        self.blocked_found: list[tuple[str, str]] = []  # (plugin, package) of each plugin the block list kept out
        self._seen: set[str] = set()       # every plugin name met, blocked or not (to spot a block-list typo)
        self._builtin: set[str] = set()    # plugins of wml-framework itself: they keep their names
        self._reported = False             # the command line has printed report_lines() already
        self._silenced_observers: dict[tuple[str, str], dict] = {}   # (plugin, run_dir) -> its failure
        self.blocked = blocked_plugins()
        for name in self.blocked:
            self.pm.set_blocked(name)
        if load_entry_points:
            self._load_entry_points()

    # -- loading --------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for plugin, found in sorted(_entry_point_claims().items()):
            by_dist = dict(found)  # one package met twice on the path is one claim
            self._seen.add(plugin)
            if plugin in self.blocked:
                self.blocked_found.extend((plugin, d) for d in sorted(by_dist))
                continue
            chosen = self._choose_package(plugin, by_dist)
            if chosen is not None:
                self._load_one(plugin, chosen, by_dist[chosen])

    def _choose_package(self, plugin: str, by_dist: dict[str, Any]) -> Optional[str]:
        """The package whose entry point is loaded as ``plugin``: the only one; else wml's own
        (a built-in keeps its name, each newcomer is refused naming both packages); else none
        (which of two third-party packages was meant cannot be guessed)."""
        dists = sorted(by_dist)
        if len(dists) == 1:
            return dists[0]
        builtin = [d for d in dists if _is_framework(d)]
        if len(builtin) == 1:
            for d in (d for d in dists if d != builtin[0]):
                self.load_failures.append(PluginFailure(
                    plugin, d, "entry point", f"the plugin name {plugin!r} is a built-in plugin of {builtin[0]}, which "
                    f"keeps it; the entry point of {d} is not loaded: rename it in that package's pyproject.toml",
                    reason=FailureReason.PLUGIN_NAME_OF_BUILTIN))
            return builtin[0]
        self.load_failures.append(PluginFailure(
            plugin, " and ".join(dists), "entry point",
            f"the plugin name {plugin!r} is claimed by {' and '.join(repr(d) for d in dists)}; neither is loaded: "
            "uninstall one, or rename its entry point", reason=FailureReason.NAME_OF_TWO_PACKAGES))
        return None

    def _load_one(self, plugin: str, dist: str, ep: Any) -> None:
        """Import one entry point and register it; a failure is recorded, never raised."""
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - recorded with the plugin's name
            self.load_failures.append(PluginFailure(plugin, dist, "entry point",
                                                    f"cannot load {ep.value!r}: {type(exc).__name__}: {exc}",
                                                    reason=FailureReason.IMPORT))
            return
        try:
            self.register(module, plugin, distribution=dist)
        except PluginError as exc:
            self.load_failures.append(PluginFailure(plugin, dist, exc.hook, exc.problem,
                                                    reason=FailureReason.REGISTER))
            return
        if _is_framework(dist):
            self._builtin.add(plugin)

    def register(self, plugin: Any, name: str, *, distribution: str = IN_CODE) -> None:
        """Register a plugin object or module under ``name`` (what an entry point does, by hand).

        Raises :class:`PluginError` for an unknown hook (with a did-you-mean), a hook wrapper, a
        bad hook signature or a name already taken."""
        self._seen.add(name)
        if self.pm.is_blocked(name):
            if (name, distribution) not in self.blocked_found:
                self.blocked_found.append((name, distribution))
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
        self._builtin.discard(name)
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

    def emit(self, event: str, payload: dict, *, log: Optional[Callable[[str], None]] = None) -> list[str]:
        """Broadcast a run event to every ``wml_run_event`` implementation (observers).

        An observer is a side effect (a log, a CSV, a dashboard): one that raises does not stop the
        run. Its failure is reported once, in one line naming the plugin, the event and the step
        (to ``log``, else to standard error), and it hears nothing more of that run (the payload's
        ``run_dir``); the other observers hear every event. Only ``Exception`` is caught: a signal's
        ``Interrupted`` or a ``KeyboardInterrupt`` raised while an observer runs stops the run as it
        would anywhere else. Returns the lines this call reported."""
        silenced = self._silenced_observers
        run = str(payload.get("run_dir"))
        reported = []
        for impl in self._impls("wml_run_event"):
            if (impl.plugin_name, run) in silenced:
                continue
            args = {k: v for k, v in (("event", str(event)), ("payload", payload)) if k in impl.argnames}
            try:
                impl.function(**args)
            except Exception as exc:  # noqa: BLE001 - an observer's failure is reported, the run goes on
                failure = self._observer_failure(impl.plugin_name, str(event), payload, exc)
                silenced[(impl.plugin_name, run)] = failure
                reported.append(failure["line"])
                if log is None:
                    print(failure["line"], file=sys.stderr, flush=True)
                else:
                    log(failure["line"])
        return reported

    def observer_failures(self, run_dir) -> list[dict]:
        """The observers that failed in the run at ``run_dir`` (each silenced from then on): dicts with
        ``plugin``, ``event``, ``step`` (None for a phase), ``error`` and ``line`` (what was reported)."""
        return [f for (_, run), f in self._silenced_observers.items() if run == str(run_dir)]

    @staticmethod
    def _observer_failure(plugin: str, event: str, payload: dict, exc: Exception) -> dict:
        step = payload.get("step") if event != "phase" else None
        where = f" (phase {payload.get('phase')!r})" if event == "phase" else f" at step {step}" if step is not None else ""
        frames = traceback.extract_tb(exc.__traceback__)
        at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        error = f"{type(exc).__name__}: {exc}"
        line = (f"warning: run observer plugin {plugin!r} failed on event {event!r}{where}: {error}{at}; "
                "it is not called again in this run, which goes on")
        return {"plugin": plugin, "event": event, "step": step, "error": error, "line": line}

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
            winner, refused = self._settle(kind, name, entries)
            if winner is not None:
                tables[kind][name] = winner
            failures.extend(refused)
        broken = {f.plugin for f in failures if f.reason.breaks_plugin}
        for table in tables.values():     # a plugin that failed in one hook is not used in its others either
            for name in [n for n, e in table.items() if e.plugin in broken]:
                del table[name]
        failures.extend(option_namespace_conflicts(tables))
        self._table_failures = failures
        return tables

    def _settle(self, kind: str, name: str, entries: list[Entry]) -> tuple[Optional[Entry], list[PluginFailure]]:
        """Who gets a name of one kind: its only claimant; else a built-in, each newcomer refused in
        a line naming both packages; else nobody, since which of two third-party plugins a run means
        cannot be guessed (each keeps its other names; blocking one gives the name to the other)."""
        if len(entries) == 1:
            return entries[0], []
        hook = KIND_HOOKS[kind]
        builtin = [e for e in entries if e.plugin in self._builtin]
        if len(builtin) == 1:
            b = builtin[0]
            return b, [PluginFailure(e.plugin, e.distribution, hook,
                                     f"{kind} {name!r} is the name of built-in plugin {b.plugin!r} ({b.distribution}), "
                                     "which keeps it; this registration is not used (the plugin's other names are): "
                                     "register it under another name", ((kind, name),),
                                     FailureReason.NAME_OF_BUILTIN) for e in entries if e is not b]
        entries = sorted(entries, key=lambda e: e.plugin)
        who = " and ".join(f"plugin {e.plugin!r} ({e.distribution})" for e in entries)
        fix = " or ".join(f"{BLOCK_ENV}={e.plugin}" for e in entries)
        problem = (f"{kind} {name!r} is registered by {who}; {'neither' if len(entries) == 2 else 'none'} is used "
                   f"(their other names are): to use one, block the other ({fix})")
        return None, [PluginFailure(e.plugin, e.distribution, hook, problem, ((kind, name),),
                                    FailureReason.NAME_OF_TWO_PLUGINS) for e in entries]

    def failure_note(self, kind: str, name: str) -> str:
        """'; not loaded: …' naming the broken plugins that might have provided ``name`` (or ''); once
        the command line has printed the warnings, it names them and points there instead of repeating."""
        related = [f for f in self.failures if (kind, name) in f.names or not f.names]
        if not related:
            return ""
        if self._reported:
            who = dict.fromkeys(f"plugin {f.plugin!r} ({f.distribution})" for f in related)
            return f"; not loaded: {', '.join(who)} (see the warning above, or `wml plugins`)"
        return f"; not loaded: {'; '.join(f.line() for f in _unique(related))}"

    # -- what the command line reports ------------------------------------------------
    def report_lines(self) -> list[str]:
        """Every warning a command prints about the plugins, each once: failures, notes and
        block-list names that match no plugin. Later errors then point to them (:meth:`failure_note`)."""
        self._reported = True
        return [*self.failure_lines(), *self.notes, *self.block_warnings()]

    @property
    def reported(self) -> bool:
        """Whether :meth:`report_lines` has been called (the command line prints them once a host)."""
        return self._reported

    def failure_lines(self) -> list[str]:
        """One line per problem (a name two plugins claim is one problem, not one per plugin)."""
        return [f.warning() for f in _unique(self.failures)]

    def block_warnings(self) -> list[str]:
        """A line for each name of ``WML_BLOCK_PLUGINS`` that is no plugin's (it blocks nothing):
        which entry point to block when it is a registered name, else a did-you-mean."""
        return [self._unknown_block(name) for name in sorted(self.blocked - self._seen)]

    def _unknown_block(self, name: str) -> str:
        owners = {(e.kind, e.plugin, e.distribution) for kind in KIND_HOOKS for e in self.tables[kind].values()
                  if e.name == name}
        owners |= {(k, f.plugin, f.distribution) for f in self.failures for k, n in f.names if n == name}
        head = f"{BLOCK_ENV} names {name!r}, which is no plugin's name, so it blocks nothing"
        if owners:
            what = " and ".join(f"the {k} {name!r} of plugin {p!r} ({d})" for k, p, d in sorted(owners))
            plugins = " or ".join(repr(p) for p in sorted({p for _, p, _ in owners}))
            return f"{head}; it is {what}: block the entry-point name {plugins} instead (see `wml plugins`)"
        return head + (close_matches(name, self._seen) or f"; plugins: {', '.join(sorted(self._seen)) or '(none)'}")

    def observers(self) -> list[dict]:
        """Every run observer (``wml_run_event`` implementation): plugin, package and help line."""
        out = []
        for impl in self._impls("wml_run_event"):
            doc = inspect.getdoc(impl.function) or inspect.getdoc(impl.plugin) or ""
            out.append({"plugin": impl.plugin_name, "package": self._dist(impl.plugin_name),
                        "help": doc.split("\n")[0]})
        return sorted(out, key=lambda o: o["plugin"])

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
            raise PluginSettingsError.creating(entry, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a factory that fails is the plugin's error
            raise PluginError.creating(entry, f"{type(exc).__name__}: {exc}") from exc

    def option_specs(self) -> dict[str, Entry]:
        """Option namespace (the registered name) -> the entry that declares options there."""
        return {e.name: e for kind in KIND_HOOKS for e in self.entries(kind) if e.options}

    def _table(self, kind: str) -> dict[str, Entry]:
        if kind not in KIND_HOOKS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KIND_HOOKS)}")
        return self.tables[kind]


def _entry_point_claims() -> dict[str, list[tuple[str, Any]]]:
    """Entry-point name -> ('distribution version', entry point) for every installed package."""
    claims: dict[str, list[tuple[str, Any]]] = {}
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                claims.setdefault(ep.name, []).append((f"{dist_name} {dist.version}", ep))
    return claims


def _is_framework(dist: str) -> bool:
    """Whether 'name version' is wml-framework itself (name spelled any way packaging allows)."""
    return re.sub(r"[-_.]+", "-", dist.split(" ")[0]).lower() == FRAMEWORK_DISTRIBUTION


def _unique(failures: list[PluginFailure]) -> list[PluginFailure]:
    """Failures with a problem shared by several plugins (a name they all claim) kept once."""
    seen, out = set(), []
    for f in failures:
        key = f.problem if f.reason.shared else f
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


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
