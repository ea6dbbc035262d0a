"""The validated configuration: defaults, presets, TOML files, overrides and error messages."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wml_framework import config as cfgmod
from wml_framework.config import ConfigError, WMLConfig


def test_defaults_validate():
    cfg = cfgmod.load(check_plugins=False)
    assert cfg == WMLConfig()


def test_champion_preset_is_the_seed_card():
    cfg = cfgmod.load(preset="babylm-champion", check_plugins=False)
    card = dict(weight_decay=0.1, beta1=0.9, beta2=0.95, bayesian_init_points=10, bayesian_n_iter=100,
                grad_clip=1.0, prune_importance="l1", layer_bound=0.9, batch_size=3, block_size=512,
                max_steps=100, loss_alpha=0.5, num_batches=60, warmup_iters=5, learning_rate=0.05,
                lr_decay_iters=200, min_lr=0.005, enable_early_stopping=True)
    assert {k: getattr(cfg, k) for k in card} == card


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('loss_alpha = 0.3\nnum_peers = 2\ncorpus = "x.txt"\n')
    cfg = cfgmod.load(path, overrides=cfgmod.parse_overrides(["num_peers=3", "enable_early_stopping=false"]),
                      check_plugins=False)
    assert (cfg.loss_alpha, cfg.num_peers, cfg.corpus, cfg.enable_early_stopping) == (0.3, 3, "x.txt", False)


@pytest.mark.parametrize("key, value, needle", [
    ("loss_alpha", 1.5, "float in [0.0, 1.0]"),
    ("layer_bound", 1.0, "(0.0, 1.0)"),
    ("temperature", 0, "(0.0, 100.0]"),
    ("num_peers", 0, "int in [1, 16]"),
    ("num_peers", 2.5, "int"),
    ("device", "tpu", "'auto', 'cpu', 'cuda'"),
    ("learning_rate", float("nan"), "float"),
    ("enable_early_stopping", "maybe", "bool"),
])
def test_bad_values_name_key_value_and_range(key, value, needle):
    with pytest.raises(ConfigError) as err:
        cfgmod.from_dict({key: value}, check_plugins=False)
    msg = str(err.value)
    assert repr(key) in msg and (repr(value) in msg or str(value) in msg) and needle in msg


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="unknown config key 'los_alpha'.*'loss_alpha'"):
        cfgmod.from_dict({"los_alpha": 0.5}, check_plugins=False)


def test_plugin_names_are_checked_against_the_registry():
    with pytest.raises(ConfigError, match="'updater'.*'nope'.*registered updaters"):
        cfgmod.from_dict({"updater": "nope"})


def test_relations_between_keys():
    with pytest.raises(ConfigError, match="min_lr"):
        cfgmod.from_dict({"learning_rate": 0.01, "min_lr": 0.1}, check_plugins=False)
    with pytest.raises(ConfigError, match="fixed_omega"):
        cfgmod.from_dict({"num_peers": 2, "fixed_omega": [1, -1]}, check_plugins=False)


def test_max_steps_has_the_seed_cards_name_as_an_alias(tmp_path):
    """Would catch: dropping the alias, or an alias that silently loses to (or overrides) the real key."""
    assert cfgmod.from_dict({"num_epochs": 7}, check_plugins=False).max_steps == 7
    assert cfgmod.from_dict({"max_steps": 7}, check_plugins=False).num_epochs == 7
    with pytest.raises(ConfigError, match="'num_epochs' and 'max_steps'.*disagree"):
        cfgmod.from_dict({"num_epochs": 7, "max_steps": 8}, check_plugins=False)
    path = tmp_path / "c.toml"
    path.write_text("num_epochs = 5\n")
    assert cfgmod.load(path, overrides={"max_steps": "9"}, check_plugins=False).max_steps == 9  # later wins
    assert "num_epochs" not in cfgmod.dumps(cfgmod.load(path, check_plugins=False))


def test_plugin_options_from_set_and_toml_are_validated_with_defaults(tmp_path):
    """Would catch: options that are not validated, not defaulted, or that --set cannot reach."""
    from wml_framework.plugin_system.host import PluginHost

    host = PluginHost()
    cfg = cfgmod.load(overrides=cfgmod.parse_overrides(["perplexity.max_blocks=3"]), host=host)
    assert cfg.plugins["perplexity"] == {"batch_size": 8, "max_blocks": 3}
    assert cfg.plugins["minimal_pairs"] == {"batch_size": 64, "predictions_dir": "", "scoring": "auto",
                                               "babylm_format": 2025, "revision": "main"}   # defaults for every plugin
    path = tmp_path / "c.toml"
    path.write_text("[plugins.minimal_pairs]\nbatch_size = 16\n")
    cfg = cfgmod.load(path, overrides={"perplexity.batch_size": "2"}, host=host)
    assert cfg.plugins["minimal_pairs"]["batch_size"] == 16 and cfg.plugins["perplexity"]["batch_size"] == 2
    assert cfgmod.load(tmp_path / "c.toml", host=host) == cfgmod.from_dict(
        cfgmod.read_toml(tmp_path / "c.toml"), host=host)
    with pytest.raises(ConfigError, match=r"'perplexity.batch_size'.*0.*int in \[1"):
        cfgmod.from_dict({"perplexity.batch_size": 0}, host=host)
    with pytest.raises(ConfigError, match="unknown option perplexity.max_block; did you mean 'max_blocks'"):
        cfgmod.from_dict({"perplexity.max_block": 1}, host=host)
    with pytest.raises(ConfigError, match="unknown plugin option namespace 'perplexty'.*'perplexity'"):
        cfgmod.from_dict({"perplexty.max_blocks": 1}, host=host)
    saved = tmp_path / "saved.toml"
    cfgmod.save(cfg, saved)
    assert cfgmod.load(saved, host=host) == cfg


def test_teacher_family_is_checked_against_the_registry():
    """Would catch: a fixed list of families in the core (a third-party family could never be chosen)."""
    with pytest.raises(ConfigError, match="'teacher_family'.*'gpt3'.*expected 'auto' or one of the registered families: .*gpt2, gpt_neox, llama"):
        cfgmod.from_dict({"teacher_family": "gpt3"})


def test_bad_toml_file_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("loss_alpha = = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfgmod.load(path, check_plugins=False)
    with pytest.raises(ConfigError, match="does not exist"):
        cfgmod.load(tmp_path / "missing.toml", check_plugins=False)


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0, 1), peers=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
def test_saved_config_round_trips(tmp_path_factory, alpha, peers, seed):
    cfg = cfgmod.from_dict({"loss_alpha": alpha, "num_peers": peers, "seed": seed}, check_plugins=False)
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    cfgmod.save(cfg, path)
    assert cfgmod.load(path, check_plugins=False) == cfg


def test_every_key_is_documented():
    table = cfgmod.markdown_table()
    for f in dataclasses.fields(WMLConfig):
        assert f.metadata["spec"].help and (f"`{f.name}`" in table or f.name == "plugins")


def test_docs_config_md_is_current():
    from pathlib import Path

    from wml_framework.plugin_system.host import PluginHost

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text(encoding="utf-8")
    assert cfgmod.markdown_table(PluginHost()) in doc, "regenerate docs/config.md from `wml config --markdown`"


@pytest.mark.parametrize("key, value", [("fixed_omega", ["a"]), ("peer_fractions", [None]), ("learning_rate", 10**400)])
def test_unconvertible_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=repr(key)):
        cfgmod.from_dict({key: value}, check_plugins=False)


def test_champion_preset_decays_eta_over_its_outer_steps():
    from wml_framework.training.schedules import warmup_cosine

    cfg = cfgmod.load(preset="babylm-champion", check_plugins=False)
    last_outer = cfg.max_steps // cfg.outer_every - 1
    eta = warmup_cosine(last_outer, cfg.omega_lr, cfg.omega_min_lr, cfg.omega_warmup_iters, cfg.omega_decay_iters)
    assert cfg.omega_lr == 0.25 and eta < 0.01


def test_a_toml_file_must_say_numbers_as_numbers_and_put_options_in_plugin_tables(tmp_path):
    """Would catch: a quoted "0.3" silently read as a number, and a top-level [perplexity] table
    answered with a bare 'unknown key' (the user meant [plugins.perplexity])."""
    path = tmp_path / "c.toml"
    path.write_text('loss_alpha = "0.3"\n')
    with pytest.raises(ConfigError, match=r"'loss_alpha' in .*c.toml: value '0.3' is a string; write it without quotes"):
        cfgmod.load(path, check_plugins=False)
    path.write_text("[perplexity]\nmax_blocks = 3\n")
    with pytest.raises(ConfigError, match=r"plugin options go in a \[plugins.perplexity\] table.*in .*c.toml"):
        cfgmod.load(path)
    with pytest.raises(ConfigError, match="unknown config key 'max_blocks'; did you mean 'perplexity.max_blocks'"):
        cfgmod.from_dict({"max_blocks": 3})


def test_list_options_bound_every_element():
    from wml_framework.api import Option
    from wml_framework.plugin_system.validation import validate_value

    spec = Option("w", [0.5], low=0.0, high=1.0)
    assert validate_value("p.w", spec, "0.2, 0.8") == [0.2, 0.8]
    for bad in ("-5, 0.7", "nan, 0.1", [0.1, 2.0]):
        with pytest.raises(ConfigError, match=r"list of numbers in \[0.0, 1.0\]"):
            validate_value("p.w", spec, bad)
    assert "[0.0, inf)" in cfgmod.allowed(Option("x", 1.0, low=0.0))


@pytest.mark.parametrize("text, expected", [("threads = 1", "1"), ('threads = "auto"', "auto"), ('threads = "3"', "3")])
def test_threads_is_a_whole_number_or_auto_written_either_way(tmp_path, text, expected):
    """Would catch: a TOML number refused for a key documented as 'a number, or auto'."""
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    assert cfgmod.load(path, check_plugins=False).threads == expected


@pytest.mark.parametrize("text", ["threads = 0", 'threads = "two"', "threads = true", "threads = 1.5", 'threads = "-1"'])
def test_a_bad_thread_count_fails_naming_the_key(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(cfgmod.ConfigError, match="config key 'threads'"):
        cfgmod.load(path, check_plugins=False)
