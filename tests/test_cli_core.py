"""The command line skeleton: version, plugin listing, plugin-name validation."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from wml_framework import __version__
from wml_framework.cli import main
from wml_framework.plugin_system.host import KIND_HOOKS, get_host


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_plugins_json_lists_every_kind_and_the_builtins():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kinds"] == list(KIND_HOOKS)
    names = {kind: {p["name"] for p in rows} for kind, rows in data["plugins"].items()}
    assert {"bayes", "l1"} <= names["initializer"]
    assert {"wml", "kd", "ce"} <= names["loss"]
    assert {"mirror", "uniform", "fixed"} <= names["updater"]
    assert {"gpt2", "llama"} <= names["family"]
    for rows in data["plugins"].values():
        for row in rows:
            assert row["package"].startswith("wml-framework ")


def test_plugins_table_is_human_readable():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "losses" in result.output and "mirror" in result.output


def test_unknown_plugin_name_lists_valid_names():
    for flag, kind in [("--init", "initializer"), ("--updater", "updater"), ("--loss", "loss")]:
        result = CliRunner().invoke(main, ["run", flag, "does-not-exist"])
        assert result.exit_code == 2
        for name in get_host().names(kind):
            assert name in result.output
        assert "does-not-exist" in result.output


def test_bad_config_value_fails_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["run", "--set", "loss_alpha=2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "loss_alpha" in result.output and "2" in result.output and "[0.0, 1.0]" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_as_a_real_subprocess():
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "plugins", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert any(r["name"] == "mirror" for r in json.loads(proc.stdout)["plugins"]["updater"])
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "run", "--updater", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_config_command_shows_the_resolved_config_with_plugin_options_and_refuses_bad_values():
    ok = CliRunner().invoke(main, ["config", "--set", "perplexity.max_blocks=3", "--loss", "kd", "--set", "num_epochs=9"])
    assert ok.exit_code == 0, ok.output
    assert 'loss = "kd"' in ok.output and "max_steps = 9" in ok.output
    assert "[plugins.perplexity]" in ok.output and "max_blocks = 3" in ok.output
    bad = CliRunner().invoke(main, ["config", "--set", "perplexity.max_blocks=-1"])
    assert bad.exit_code == 2 and "'perplexity.max_blocks'" in bad.output and "Traceback" not in bad.output
    table = CliRunner().invoke(main, ["config", "--markdown"])
    assert table.exit_code == 0 and "| `max_steps` |" in table.output and "`perplexity.max_blocks`" in table.output
