"""The plugin host: entry-point loading, blocking, duplicate names and errors that name the plugin."""

import sys
import textwrap

import pytest

from wml_framework import hookimpl
from wml_framework.plugin_system.host import (
    KIND_HOOKS,
    PluginError,
    PluginHost,
    UnknownPluginError,
)


def _fake_distribution(root, dist_name, module_name, body, ep_name):
    """An installed-looking distribution (dist-info with entry points) on a temporary path."""
    (root / f"{module_name}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist_name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[wml]\n{ep_name} = {module_name}\n")


PLUGIN_BODY = """
from wml_framework import hookimpl

class Sharpen:
    '''An updater that does nothing useful.'''
    needs_validation = False

@hookimpl
def wml_register_updaters(register):
    register("sharpen", Sharpen, help="test updater")
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fake_wml_")]:
        del sys.modules[name]


def test_builtins_arrive_through_entry_points():
    host = PluginHost()
    assert set(KIND_HOOKS) == set(host.tables)
    for entry in (e for kind in KIND_HOOKS for e in host.entries(kind)):
        assert entry.distribution.startswith("wml-framework"), entry


def test_third_party_entry_point_is_loaded_with_its_package(fake_site):
    _fake_distribution(fake_site, "fake-wml-sharpen", "fake_wml_sharpen", PLUGIN_BODY, "sharpen_plugin")
    host = PluginHost()
    entry = host.get("updater", "sharpen")
    assert entry.plugin == "sharpen_plugin"
    assert entry.distribution == "fake-wml-sharpen 1.0"
    assert entry.help == "test updater"


@pytest.mark.parametrize("spec", ["sharpen_plugin, other", "sharpen_plugin other", " other,sharpen_plugin "])
def test_blocked_plugin_is_not_loaded(fake_site, monkeypatch, spec):
    """Would catch: a block list split only on commas (spaces silently blocked nothing)."""
    _fake_distribution(fake_site, "fake-wml-sharpen", "fake_wml_sharpen", PLUGIN_BODY, "sharpen_plugin")
    monkeypatch.setenv("WML_BLOCK_PLUGINS", spec)
    host = PluginHost()
    assert "sharpen" not in host.names("updater") and "mirror" in host.names("updater")


def test_two_packages_claiming_one_plugin_name_name_both_and_leave_the_rest_usable(fake_site):
    _fake_distribution(fake_site, "fake-wml-a", "fake_wml_a", PLUGIN_BODY, "same_name")
    _fake_distribution(fake_site, "fake-wml-b", "fake_wml_b", PLUGIN_BODY, "same_name")
    host = PluginHost()
    (failure,) = [f for f in host.failures if f.plugin == "same_name"]
    assert "fake-wml-a 1.0" in failure.line() and "fake-wml-b 1.0" in failure.line()
    assert "mirror" in host.names("updater") and "sharpen" not in host.names("updater")


def test_an_entry_point_that_cannot_import_is_listed_and_the_others_still_work(fake_site):
    _fake_distribution(fake_site, "fake-wml-broken", "fake_wml_broken", "import no_such_module_xyz\n", "broken_one")
    host = PluginHost()
    (failure,) = host.failures
    assert failure.plugin == "broken_one" and failure.distribution == "fake-wml-broken 1.0"
    assert "cannot load" in failure.line() and "no_such_module_xyz" in failure.line()
    assert "wml" in host.names("loss")
    with pytest.raises(UnknownPluginError, match="unknown loss 'x'.*not loaded: plugin 'broken_one'"):
        host.get("loss", "x")


class _Provides:
    def __init__(self, kind_hook, name):
        self.kind_hook, self.name = kind_hook, name

    @hookimpl
    def wml_register_losses(self, register):
        register(self.name, lambda cfg: None)


def test_two_plugins_registering_the_same_loss_name_are_both_named_and_neither_used():
    """Would catch: the second plugin blamed alone (it can be the innocent one), or one silently winning."""
    host = PluginHost(load_entry_points=False)
    host.register(_Provides("loss", "twin"), "first", distribution="pkg-a 1.0")
    host.register(_Provides("loss", "twin"), "second", distribution="pkg-b 2.0")
    assert host.names("loss") == []
    lines = [f.line() for f in host.failures]
    assert len(lines) == 2 and all("'first' (pkg-a 1.0)" in l and "'second' (pkg-b 2.0)" in l for l in lines)
    with pytest.raises(UnknownPluginError, match="unknown loss 'twin'.*registered by plugin 'first'"):
        host.get("loss", "twin")


def test_a_raising_hook_is_reported_with_plugin_and_hook():
    class Broken:
        @hookimpl
        def wml_register_updaters(self, register):
            register("half", lambda cfg, m: None)
            raise RuntimeError("boom")

    host = PluginHost(load_entry_points=False)
    host.register(Broken(), "broken")
    host.register(_Provides("loss", "fine"), "healthy")
    assert host.names("updater") == [] and host.names("loss") == ["fine"]  # nothing half-registered
    (failure,) = host.failures
    assert "plugin 'broken' ((registered in code)) failed in 'wml_register_updaters'" in failure.line()
    assert "RuntimeError: boom" in failure.line()


@pytest.mark.parametrize("name, obj, problem", [("Bad Name", lambda: 0, "invalid"), ("ok", None, "callable")])
def test_bad_registrations_are_rejected(name, obj, problem):
    class Sloppy:
        @hookimpl
        def wml_register_evaluators(self, register):
            register(name, obj)

    host = PluginHost(load_entry_points=False)
    host.register(Sloppy(), "sloppy")
    assert host.names("evaluator") == []
    assert problem in host.failures[0].line() and "'sloppy'" in host.failures[0].line()


def test_unknown_name_lists_the_valid_ones():
    host = PluginHost(load_entry_points=False)
    host.register(_Provides("loss", "alpha"), "p")
    with pytest.raises(UnknownPluginError, match="unknown loss 'beta'; valid: alpha"):
        host.get("loss", "beta")


def test_hookspec_validation_rejects_a_misspelled_hook_with_a_did_you_mean():
    class Typo:
        @hookimpl
        def wml_register_loses(self, register):  # not a hook of ours
            pass

    host = PluginHost(load_entry_points=False)
    with pytest.raises(PluginError, match="'typo'.*unknown hook 'wml_register_loses'; did you mean 'wml_register_losses'"):
        host.register(Typo(), "typo")
    assert host.pm.get_plugin("typo") is None


def test_a_forgotten_hookimpl_is_warned_about():
    """Would catch: a plugin whose hook pluggy silently ignores because the marker is missing."""
    from wml_framework.plugin_system.host import PluginWarning

    class Forgetful:
        def wml_register_losses(self, register):  # no @hookimpl
            register("never", lambda cfg: None)

        def wml_register_updater(self, register):  # no @hookimpl, and misspelled
            pass

    host = PluginHost(load_entry_points=False)
    with pytest.warns(PluginWarning) as caught:
        host.register(Forgetful(), "forgetful")
    text = " ".join(str(w.message) for w in caught)
    assert "wml_register_losses() is not marked @hookimpl" in text
    assert "did you mean the hook 'wml_register_updaters'" in text
    assert host.names("loss") == [] and len(host.notes) == 2


@pytest.mark.parametrize("marker", [dict(wrapper=True), dict(hookwrapper=True)])
def test_hook_wrappers_are_refused_at_registration(marker):
    """Would catch: a wrapper that silently does nothing (the host calls implementations itself)."""
    class Wrapping:
        @hookimpl(**marker)
        def wml_run_event(self, event, payload):
            yield

    host = PluginHost(load_entry_points=False)
    with pytest.raises(PluginError, match="'wrapping' failed in hook 'wml_run_event': hook wrappers are not supported"):
        host.register(Wrapping(), "wrapping")


def test_options_must_match_the_factory_and_be_valid():
    from wml_framework.api import Option

    def make(cfg, *, gamma=1.0):
        return None

    cases = {
        "undeclared keyword": ([Option("beta", 1.0)], "takes no keyword argument 'beta'"),
        "bad default": ([Option("gamma", -1.0, low=0.0)], "default of option 'gamma' is invalid"),
        "bad type": ([Option("gamma", {"a": 1})], "unsupported type dict"),
    }
    for label, (options, problem) in cases.items():
        class Declaring:
            @hookimpl
            def wml_register_losses(self, register, options=options):
                register("focal", make, options=options)

        host = PluginHost(load_entry_points=False)
        host.register(Declaring(), "declaring")
        assert host.names("loss") == [], label
        assert problem in host.failures[0].line(), (label, host.failures[0].line())


def test_run_events_reach_every_observer_and_a_failing_one_is_named_once_and_silenced():
    """Would catch: an observer's exception stopping the run (or the other observers), reported
    without the plugin's name, or reported again at every later event."""
    seen = []

    class Watcher:
        @hookimpl
        def wml_run_event(self, event, payload):
            seen.append((event, payload["x"]))

    class Crasher:
        @hookimpl
        def wml_run_event(self, event):
            raise ValueError("nope")

    host = PluginHost(load_entry_points=False)
    host.register(Watcher(), "watcher")
    host.emit("step", {"x": 1})
    assert seen == [("step", 1)]
    host.register(Crasher(), "crasher")
    lines = []
    assert host.emit("step", {"x": 2, "step": 7, "run_dir": "r"}, log=lines.append) == lines
    host.emit("step", {"x": 3, "step": 8, "run_dir": "r"}, log=lines.append)
    assert seen == [("step", 1), ("step", 2), ("step", 3)]
    assert len(lines) == 1 and "'crasher'" in lines[0] and "'step' at step 7" in lines[0] and "nope" in lines[0]
    assert [f["plugin"] for f in host.observer_failures("r")] == ["crasher"] and host.observer_failures("other") == []


def test_two_kinds_with_one_name_cannot_both_declare_options():
    """Would catch: two plugins validating (and receiving) each other's options under one namespace."""
    from wml_framework.api import Option

    class Clash:
        @hookimpl
        def wml_register_losses(self, register):
            register("dup", lambda cfg, *, x=1: None, options=[Option("x", 1)])

        @hookimpl
        def wml_register_evaluators(self, register):
            register("dup", lambda cfg, *, x=1: None, options=[Option("x", 2)])

    host = PluginHost(load_entry_points=False)
    host.register(Clash(), "clash")
    assert host.names("loss") == [] and host.names("evaluator") == []
    assert any("option namespace 'dup' is declared by" in f.line() for f in host.failures)


def test_reserved_evaluator_names_are_refused():
    class Greedy:
        @hookimpl
        def wml_register_evaluators(self, register):
            register("models", lambda cfg: None)

    host = PluginHost(load_entry_points=False)
    host.register(Greedy(), "greedy")
    assert host.names("evaluator") == [] and "evaluator name 'models' is reserved" in host.failures[0].line()


def test_a_plugin_that_fails_in_one_hook_is_not_used_in_the_others():
    class Half:
        @hookimpl
        def wml_register_losses(self, register):
            register("fine-loss", lambda cfg: None)

        @hookimpl
        def wml_register_updaters(self, register):
            raise RuntimeError("boom")

    host = PluginHost(load_entry_points=False)
    host.register(Half(), "half")
    assert host.names("loss") == [] and host.names("updater") == []
    with pytest.raises(UnknownPluginError, match="unknown loss 'fine-loss'.*not loaded: plugin 'half'.*boom"):
        host.get("loss", "fine-loss")


def test_asking_for_a_name_a_broken_plugin_would_provide_says_so(fake_site, monkeypatch):
    from click.testing import CliRunner

    from wml_framework.cli import main
    from wml_framework.plugin_system import host as plugins

    _fake_distribution(fake_site, "fake-wml-a", "fake_wml_a", PLUGIN_BODY, "sharpen_a")
    _fake_distribution(fake_site, "fake-wml-b", "fake_wml_b", PLUGIN_BODY.replace("test updater", "twin"), "sharpen_b")
    for args in (["config", "--updater", "sharpen"], ["config", "--set", "updater=sharpen"]):
        monkeypatch.setattr(plugins, "_HOST", None)            # each command is a process of its own
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "'sharpen'" in result.output, result.output
        assert "not loaded" in result.output and "registered by plugin 'sharpen_a'" in result.output


def test_whether_a_failure_breaks_its_plugin_is_decided_by_its_reason_not_its_words():
    """A hook that fails with a message ending like the host's own 'neither is used' still breaks its
    plugin, and a name claimed by two plugins leaves both usable otherwise.

    Would catch: the host matching its own message text to tell the two apart (the first plugin's
    loss would then stay registered although its updater hook raised)."""
    from wml_framework.plugin_system.host import FailureReason

    class Unlucky:
        @hookimpl
        def wml_register_losses(self, register):
            register("unlucky-loss", lambda cfg: None)

        @hookimpl
        def wml_register_updaters(self, register):
            raise RuntimeError("both sides said no, so neither is used")

    class TwinAndSolo:
        @hookimpl
        def wml_register_losses(self, register):
            register("twin", lambda cfg: None)

        @hookimpl
        def wml_register_updaters(self, register):
            register("solo", lambda cfg, m: None)

    host = PluginHost(load_entry_points=False)
    host.register(Unlucky(), "unlucky")
    host.register(TwinAndSolo(), "first")
    host.register(_Provides("loss", "twin"), "second")
    assert host.names("loss") == [] and host.names("updater") == ["solo"]
    reasons = sorted((f.plugin, f.reason) for f in host.failures)
    assert reasons == [("first", FailureReason.NAME_OF_TWO_PLUGINS), ("second", FailureReason.NAME_OF_TWO_PLUGINS),
                       ("unlucky", FailureReason.HOOK)]
    assert FailureReason.HOOK.breaks_plugin and not FailureReason.NAME_OF_TWO_PLUGINS.breaks_plugin


def test_load_failures_say_why(fake_site):
    """Would catch: a failure recorded without its reason (every one would read as a raising hook)."""
    from wml_framework.plugin_system.host import FailureReason

    _fake_distribution(fake_site, "fake-wml-a", "fake_wml_a", PLUGIN_BODY, "twin")
    _fake_distribution(fake_site, "fake-wml-b", "fake_wml_b", PLUGIN_BODY, "twin")
    _fake_distribution(fake_site, "fake-wml-c", "fake_wml_c", "import no_such_module_anywhere\n", "cannot")
    _fake_distribution(fake_site, "fake-wml-d", "fake_wml_d",
                       "from wml_framework import hookimpl\n@hookimpl\ndef wml_register_lossez(register):\n    pass\n",
                       "misspelt")
    reasons = {f.plugin: f.reason for f in PluginHost().failures}
    assert reasons == {"twin": FailureReason.NAME_OF_TWO_PACKAGES, "cannot": FailureReason.IMPORT,
                       "misspelt": FailureReason.REGISTER}
