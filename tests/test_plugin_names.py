"""Who gets a name several plugins claim, blocking plugins, and what ``wml plugins`` shows.

Would catch: a third-party plugin disabling a built-in by registering its name (``wml config`` and
a default run then stopped with exit 2) or by naming its entry point like one; two plugins' shared
name reported once per plugin; a failure repeated in a command's error after its warning; a block
list naming nothing, silently; blocked plugins and run observers missing from ``wml plugins``; a
factory's failure blamed on its registration hook.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from wml_framework import hookimpl, load_config
from wml_framework.cli import main
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import (
    FailureReason,
    PluginError,
    PluginHost,
    PluginSettingsError,
)

ROOT = Path(__file__).resolve().parents[1]


def fake_distribution(root: Path, dist_name: str, module_name: str, body: str, ep_name: str) -> None:
    """An installed-looking distribution (dist-info with one ``wml`` entry point) in ``root``."""
    (root / f"{module_name}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist_name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[wml]\n{ep_name} = {module_name}\n")


def updaters_body(*names: str, observer: bool = False) -> str:
    """A plugin module registering an updater under each of ``names`` (and a run observer)."""
    regs = "".join(f"    register({n!r}, Quiet)\n" for n in names)
    watch = '\n@hookimpl\ndef wml_run_event(event, payload):\n    """Watches every run."""\n' if observer else ""
    return ("from wml_framework import hookimpl\n\nclass Quiet:\n    '''does nothing'''\n    needs_validation = False\n\n"
            f"@hookimpl\ndef wml_register_updaters(register):\n{regs}{watch}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for fake packages, no block list, and a fresh command-line host."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("WML_BLOCK_PLUGINS", raising=False)
    monkeypatch.setattr(plugins, "_HOST", None)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fake_wml_")]:
        del sys.modules[name]


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


# ------------------------------------------------------------------ §3: built-ins keep their names

def test_a_plugin_registering_a_builtin_name_leaves_the_builtin_in_place(site):
    """Would catch: the newcomer disabling the built-in ``mirror`` (the default updater), the
    built-in reported as skipped, or the newcomer's other names lost."""
    fake_distribution(site, "fake-wml-mirror", "fake_wml_mirror", updaters_body("mirror", "sharpen"), "my_mirror")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert 'updater = "mirror"' in result.stdout
    (line,) = warnings_of(result)
    assert "'my_mirror' (fake-wml-mirror 1.0)" in line and "built-in plugin 'updaters' (wml-framework" in line
    assert "skipped" not in line and "register it under another name" in line

    host = PluginHost()
    assert host.get("updater", "mirror").plugin == "updaters"
    assert {"mirror", "fixed", "uniform", "sharpen"} <= set(host.names("updater"))
    assert [(f.plugin, f.reason) for f in host.failures] == [("my_mirror", FailureReason.NAME_OF_BUILTIN)]
    cfg = load_config(host=host)                      # a default run's configuration and its updater
    assert type(host.create("updater", cfg.updater, cfg, 2)).__module__.startswith("wml_plugins.")


def test_an_entry_point_named_like_a_builtin_plugin_is_refused_and_the_builtin_loads(site):
    """Would catch: 'the plugin name is claimed by two packages; neither is loaded' taking every
    built-in updater away."""
    fake_distribution(site, "fake-wml-updaters", "fake_wml_updaters", updaters_body("sharpen"), "updaters")
    host = PluginHost()
    assert "mirror" in host.names("updater") and "sharpen" not in host.names("updater")
    (failure,) = host.failures
    assert failure.reason is FailureReason.PLUGIN_NAME_OF_BUILTIN and failure.distribution == "fake-wml-updaters 1.0"
    assert "built-in plugin of wml-framework" in failure.line() and "rename it" in failure.line()


# ------------------------------------------------------------------ two third-party plugins, one name

def test_a_name_two_plugins_register_is_reported_once_and_says_how_to_choose(site, monkeypatch):
    """Would catch: the line printed once per plugin, the error repeating the warning, a fix that
    names no plugin, or blocking one plugin not giving the name to the other."""
    fake_distribution(site, "fake-wml-a", "fake_wml_a", updaters_body("sharpen", "only-a"), "sharpen_a")
    fake_distribution(site, "fake-wml-b", "fake_wml_b", updaters_body("sharpen", "only-b"), "sharpen_b")
    listed = CliRunner().invoke(main, ["plugins"])
    assert listed.output.count("is registered by plugin 'sharpen_a' (fake-wml-a 1.0) and plugin 'sharpen_b'") == 1
    assert "WML_BLOCK_PLUGINS=sharpen_a or WML_BLOCK_PLUGINS=sharpen_b" in listed.output
    assert "only-a" in listed.output and "only-b" in listed.output

    monkeypatch.setattr(plugins, "_HOST", None)
    asked = CliRunner().invoke(main, ["config", "--updater", "sharpen"])
    assert asked.exit_code == 2 and asked.output.count("is registered by plugin") == 1, asked.output
    assert "see the warning above" in asked.output

    monkeypatch.setenv("WML_BLOCK_PLUGINS", "sharpen_a")
    assert PluginHost().get("updater", "sharpen").plugin == "sharpen_b"


def test_an_invalid_name_is_reported_once(site, monkeypatch):
    """Would catch: the failure printed as a warning and again inside the error of a command that
    asks for a name it might have provided."""
    body = "from wml_framework import hookimpl\n@hookimpl\ndef wml_register_losses(register):\n    register('Bad Name', print)\n"
    fake_distribution(site, "fake-wml-bad", "fake_wml_bad", body, "bad_names")
    result = CliRunner().invoke(main, ["config", "--loss", "focal"])
    assert result.exit_code == 2 and result.output.count("invalid loss name 'Bad Name'") == 1, result.output
    assert "not loaded: plugin 'bad_names' (fake-wml-bad 1.0) (see the warning above" in result.output


# ------------------------------------------------------------------ §4: blocking and listing

def test_blocked_plugins_are_listed_with_their_package(site, monkeypatch):
    fake_distribution(site, "fake-wml-sharpen", "fake_wml_sharpen", updaters_body("sharpen"), "sharpen_plugin")
    monkeypatch.setenv("WML_BLOCK_PLUGINS", "sharpen_plugin run_log")
    text = CliRunner().invoke(main, ["plugins"]).output
    blocked = text.split("blocked (WML_BLOCK_PLUGINS)\n")[1].splitlines()[:2]
    assert "sharpen_plugin" in blocked[1] and "[fake-wml-sharpen 1.0]" in blocked[1], text
    assert "run_log" in blocked[0] and "[wml-framework" in blocked[0]
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    assert {"plugin": "sharpen_plugin", "package": "fake-wml-sharpen 1.0"} in data["blocked"]
    assert all(o["plugin"] != "run_log" for o in data["observers"]) and data["notes"] == []


def test_blocking_the_updater_the_teacher_is_trained_with_is_one_line_before_any_work(site, monkeypatch, tmp_path):
    """The docs' way to replace a built-in (block its plugin) takes ``uniform`` away, which a run that
    trains its teacher needs. Would catch: a traceback after the data is prepared
    (``UnknownPluginError: unknown updater 'uniform'``) instead of one line before any work."""
    fake_distribution(site, "fake-wml-mine", "fake_wml_mine", updaters_body("my_uniform"), "mine")
    monkeypatch.setenv("WML_BLOCK_PLUGINS", "updaters")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--updater", "my_uniform", "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "the teacher is trained with updater 'uniform'" in errors[0] and "--teacher" in errors[0]
    assert not out.exists()


def test_a_block_list_name_that_is_no_plugin_is_warned_about(site, monkeypatch):
    """Would catch: a block list that silently blocks nothing, above all when it names what a
    plugin registers (``sharpen``) instead of the plugin's entry-point name."""
    fake_distribution(site, "fake-wml-sharpen", "fake_wml_sharpen", updaters_body("sharpen"), "sharpen_plugin")
    monkeypatch.setenv("WML_BLOCK_PLUGINS", "sharpen, sharpen_plugn")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    registered, typo = warnings_of(result)
    assert "WML_BLOCK_PLUGINS names 'sharpen', which is no plugin's name" in registered
    assert "the updater 'sharpen' of plugin 'sharpen_plugin' (fake-wml-sharpen 1.0)" in registered
    assert "block the entry-point name 'sharpen_plugin' instead" in registered
    assert "'sharpen_plugn'" in typo and "did you mean 'sharpen_plugin'" in typo
    assert "sharpen" in PluginHost().names("updater")       # nothing was blocked


def test_run_observers_are_listed_builtin_and_third_party(site):
    fake_distribution(site, "fake-wml-watch", "fake_wml_watch", updaters_body("sharpen", observer=True), "watcher")
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    observers = {o["plugin"]: o for o in data["observers"]}
    assert observers["watcher"] == {"plugin": "watcher", "package": "fake-wml-watch 1.0", "help": "Watches every run."}
    assert observers["run_log"]["package"].startswith("wml-framework")
    text = CliRunner().invoke(main, ["plugins"]).output
    section = text.split("run observers\n")[1]
    assert "run_log" in section   # the names are padded to the longest observer name (the built-in 'tensorboard')
    assert re.search(r"\n  watcher +Watches every run\.  \[fake-wml-watch 1\.0\]", section), section


def test_json_failures_say_why(site):
    fake_distribution(site, "fake-wml-mirror", "fake_wml_mirror", updaters_body("mirror"), "my_mirror")
    fake_distribution(site, "fake-wml-gone", "fake_wml_gone", "import no_such_module_here\n", "gone")
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    assert {f["plugin"]: f["reason"] for f in data["failed"]} == {"my_mirror": "name of a built-in", "gone": "import"}


@pytest.mark.parametrize("error, kind", [(RuntimeError("boom"), PluginError), (ValueError("gamma < 0"), PluginSettingsError)])
def test_a_factory_failure_names_what_failed_not_the_registration_hook(error, kind):
    """Would catch: 'failed in hook wml_register_losses' for a hook that ran fine long before."""
    def make(cfg):
        raise error

    class Plugin:
        @hookimpl
        def wml_register_losses(self, register):
            register("fragile", make)

    host = PluginHost(load_entry_points=False)
    host.register(Plugin(), "fragile_plugin", distribution="fake-fragile 2.0")
    with pytest.raises(kind) as caught:
        host.create("loss", "fragile", None)
    text = str(caught.value)
    assert text.startswith("plugin 'fragile_plugin' (fake-fragile 2.0) failed creating loss 'fragile': ")
    assert str(error) in text and "wml_register_losses" not in text


def test_the_block_list_is_documented_where_users_look():
    """``wml --help``, ``wml plugins --help``, the README and docs/plugins.md §1 and §12."""
    for args in (["--help"], ["plugins", "--help"]):
        assert "WML_BLOCK_PLUGINS" in CliRunner().invoke(main, args).output, args
    assert "WML_BLOCK_PLUGINS" in (ROOT / "README.md").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    sections = {s.split("\n", 1)[0]: s for s in doc.split("\n## ")}
    for title in ("1. The package", "12. Errors and deliberate choices"):
        assert "WML_BLOCK_PLUGINS" in sections[title], title
