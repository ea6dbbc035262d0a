"""The plugin host: entry-point loading, blocking, duplicate names and errors that name the plugin."""

import sys
import textwrap

import pytest

from wml_framework import hookimpl
from wml_framework.plugins import KIND_HOOKS, PluginError, PluginHost, UnknownPluginError


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


def test_blocked_plugin_is_not_loaded(fake_site, monkeypatch):
    _fake_distribution(fake_site, "fake-wml-sharpen", "fake_wml_sharpen", PLUGIN_BODY, "sharpen_plugin")
    monkeypatch.setenv("WML_BLOCK_PLUGINS", "sharpen_plugin, other")
    host = PluginHost()
    assert "sharpen" not in host.names("updater")


def test_two_packages_claiming_one_plugin_name_is_an_error(fake_site):
    _fake_distribution(fake_site, "fake-wml-a", "fake_wml_a", PLUGIN_BODY, "same_name")
    _fake_distribution(fake_site, "fake-wml-b", "fake_wml_b", PLUGIN_BODY, "same_name")
    with pytest.raises(PluginError, match="same_name.*claimed by both"):
        PluginHost()


def test_an_entry_point_that_cannot_import_names_the_plugin(fake_site):
    _fake_distribution(fake_site, "fake-wml-broken", "fake_wml_broken", "import no_such_module_xyz\n", "broken_one")
    with pytest.raises(PluginError, match="'broken_one'.*cannot load"):
        PluginHost()


class _Provides:
    def __init__(self, kind_hook, name):
        self.kind_hook, self.name = kind_hook, name

    @hookimpl
    def wml_register_losses(self, register):
        register(self.name, lambda cfg: None)


def test_two_plugins_registering_the_same_loss_name_is_an_error():
    host = PluginHost(load_entry_points=False)
    host.register(_Provides("loss", "twin"), "first")
    host.register(_Provides("loss", "twin"), "second")
    with pytest.raises(PluginError) as err:
        host.names("loss")
    assert "'second'" in str(err.value) and "'first'" in str(err.value) and "wml_register_losses" in str(err.value)


def test_a_raising_hook_is_reported_with_plugin_and_hook():
    class Broken:
        @hookimpl
        def wml_register_updaters(self, register):
            raise RuntimeError("boom")

    host = PluginHost(load_entry_points=False)
    host.register(Broken(), "broken")
    with pytest.raises(PluginError, match=r"plugin 'broken' failed in hook 'wml_register_updaters'.*boom"):
        host.names("updater")


@pytest.mark.parametrize("name, obj, problem", [("Bad Name", lambda: 0, "invalid"), ("ok", None, "callable")])
def test_bad_registrations_are_rejected(name, obj, problem):
    class Sloppy:
        @hookimpl
        def wml_register_evaluators(self, register):
            register(name, obj)

    host = PluginHost(load_entry_points=False)
    host.register(Sloppy(), "sloppy")
    with pytest.raises(PluginError, match=f"'sloppy'.*{problem}"):
        host.names("evaluator")


def test_unknown_name_lists_the_valid_ones():
    host = PluginHost(load_entry_points=False)
    host.register(_Provides("loss", "alpha"), "p")
    with pytest.raises(UnknownPluginError, match="unknown loss 'beta'; valid: alpha"):
        host.get("loss", "beta")


def test_hookspec_validation_rejects_a_misspelled_hook():
    class Typo:
        @hookimpl
        def wml_register_loses(self, register):  # not a hook of ours
            pass

    host = PluginHost(load_entry_points=False)
    with pytest.raises(PluginError, match="'typo'.*unknown hook 'wml_register_loses'"):
        host.register(Typo(), "typo")
    assert host.pm.get_plugin("typo") is None


def test_run_events_reach_every_observer_and_errors_name_it():
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
    with pytest.raises(PluginError, match="'crasher'.*wml_run_event.*nope"):
        host.emit("step", {"x": 2})
