"""Model families: exact analytic parameter counts, config building, the prunable-axis map."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers_models import tiny_gpt2_config, tiny_llama_config
from transformers import AutoModelForCausalLM

from wml_framework.plugin_system.host import get_host

N_RANDOM = 60


def instantiated_count(config) -> int:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def family(name):
    return get_host().create("family", name)


def random_gpt2_config(rng: random.Random):
    n_head = rng.randint(1, 4)
    return tiny_gpt2_config(
        vocab_size=rng.randint(5, 300), n_layer=rng.randint(1, 3), n_head=n_head,
        n_embd=n_head * rng.randint(1, 12), n_inner=rng.choice([None, rng.randint(1, 70)]),
        n_positions=rng.randint(1, 80), tie_word_embeddings=rng.random() < 0.5,
        add_cross_attention=rng.random() < 0.2, bos_token_id=None, eos_token_id=None)


def random_llama_config(rng: random.Random):
    n_kv = rng.randint(1, 3)
    n_head = n_kv * rng.randint(1, 3)
    head_dim = 2 * rng.randint(1, 8)          # rotary embeddings need an even head size
    hidden = rng.choice([n_head * head_dim, n_head * rng.randint(1, 12)])   # HF wants n_head | hidden
    return tiny_llama_config(
        vocab_size=rng.randint(5, 300), n_layer=rng.randint(1, 3), n_head=n_head, n_kv_head=n_kv,
        hidden=hidden, head_dim=head_dim, ffn=rng.randint(1, 70), max_positions=rng.randint(1, 80),
        tie_word_embeddings=rng.random() < 0.5, attention_bias=rng.random() < 0.3,
        mlp_bias=rng.random() < 0.3, bos_token_id=None, eos_token_id=None)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_gpt2_count_equals_instantiated(seed):
    cfg = random_gpt2_config(random.Random(seed))
    assert family("gpt2").count_parameters(cfg) == instantiated_count(cfg)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_llama_count_equals_instantiated(seed):
    cfg = random_llama_config(random.Random(1000 + seed))
    assert family("llama").count_parameters(cfg) == instantiated_count(cfg)


def test_random_configs_cover_the_variants():
    """The random draws above really exercise tied and untied heads, biases, GQA, cross-attention."""
    g = [random_gpt2_config(random.Random(s)) for s in range(N_RANDOM)]
    l = [random_llama_config(random.Random(1000 + s)) for s in range(N_RANDOM)]
    assert {c.tie_word_embeddings for c in g} == {True, False} == {c.tie_word_embeddings for c in l}
    assert any(c.add_cross_attention for c in g) and any(c.n_inner is None for c in g)
    assert any(c.num_key_value_heads < c.num_attention_heads for c in l)
    assert any(c.attention_bias for c in l) and any(c.mlp_bias for c in l)
    assert any(c.hidden_size != c.num_attention_heads * c.head_dim for c in l)


@pytest.mark.parametrize("name,base", [
    ("gpt2", tiny_gpt2_config(activation_function="relu", layer_norm_epsilon=1e-3, tie_word_embeddings=False)),
    ("llama", tiny_llama_config(n_head=4, n_kv_head=2, rms_norm_eps=1e-3, hidden_act="gelu",
                                tie_word_embeddings=True, attention_bias=True)),
])
def test_make_config_takes_shape_and_copies_the_rest(name, base):
    fam = family(name)
    cfg = fam.make_config(vocab_size=77, n_layer=3, n_head=6, head_dim=8, ffn=40, max_positions=50,
                          bos_token_id=3, eos_token_id=4, base=base)
    assert cfg.model_type == fam.model_type == name
    assert fam.shape(cfg) == dict(n_layer=3, n_head=6, head_dim=8, hidden=48, ffn=40)
    assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id) == (77, 3, 4)
    assert fam.max_positions(cfg) == 50
    assert cfg.tie_word_embeddings == base.tie_word_embeddings
    if name == "gpt2":
        assert (cfg.activation_function, cfg.layer_norm_epsilon) == ("relu", 1e-3)
    else:
        assert (cfg.hidden_act, cfg.rms_norm_eps, cfg.attention_bias) == ("gelu", 1e-3, True)
        assert cfg.num_key_value_heads == 3                      # base's 2:1 grouping kept
        assert cfg.rope_parameters == base.rope_parameters
    assert base.vocab_size == 128                                # base untouched
    assert fam.count_parameters(cfg) == instantiated_count(cfg)


def test_make_config_without_base_llama_has_no_grouping():
    cfg = family("llama").make_config(vocab_size=50, n_layer=1, n_head=4, head_dim=8, ffn=16, max_positions=16)
    assert cfg.num_key_value_heads == 4 and cfg.hidden_size == 32


def test_gpt2_rejects_hidden_different_from_heads_times_head_dim():
    with pytest.raises(ValueError, match="hidden"):
        family("gpt2").make_config(vocab_size=50, n_layer=1, n_head=4, head_dim=8, ffn=16,
                                   max_positions=16, hidden=30)


@pytest.mark.parametrize("name,base", [("gpt2", tiny_gpt2_config()),
                                       ("llama", tiny_llama_config(n_head=6, n_kv_head=2, hidden=48))])
def test_vectorised_count_matches_built_configs(name, base):
    fam = family(name)
    rng = np.random.default_rng(0)
    L, H, d, F = (rng.integers(1, hi, size=40) for hi in (5, 9, 17, 200))
    counts = fam.count_shapes(base, n_layer=L, n_head=H, head_dim=d, ffn=F)
    for i in range(40):
        cfg = fam.make_config(vocab_size=base.vocab_size, n_layer=L[i], n_head=H[i], head_dim=d[i], ffn=F[i],
                              max_positions=fam.max_positions(base), base=base)
        assert counts[i] == fam.count_parameters(cfg)


@pytest.mark.parametrize("name,cfg", [
    ("gpt2", tiny_gpt2_config(tie_word_embeddings=False)),
    ("llama", tiny_llama_config(n_head=4, n_kv_head=2, attention_bias=True, mlp_bias=True)),
    ("llama", tiny_llama_config(hidden=40, head_dim=6, tie_word_embeddings=True)),
])
def test_prunable_axes_describe_every_parameter(name, cfg):
    """Every parameter is described, and every unit axis has repeat × units × width entries."""
    fam = family(name)
    model = AutoModelForCausalLM.from_config(cfg)
    axes = fam.prunable_axes(cfg)
    units = fam.unit_counts(cfg)
    params = dict(model.named_parameters())
    assert set(axes) == set(params)
    for pname, spec in axes.items():
        p = params[pname]
        assert len(spec) == p.ndim, pname
        for size, axis in zip(p.shape, spec):
            if axis is not None:
                assert size == axis.repeat * units[axis.unit] * axis.width, pname
                assert (axis.layer is None) == (axis.unit == "hidden")
                assert axis.layer is None or fam.layer_of(pname) == axis.layer


@pytest.mark.parametrize("name,cfg", [("gpt2", tiny_gpt2_config()),
                                      ("llama", tiny_llama_config(n_head=4, n_kv_head=2, hidden=40, head_dim=6))])
def test_pruned_config_counts(name, cfg):
    fam = family(name)
    d = fam.shape(cfg)["head_dim"]
    for L, k, F, h in [(1, 1, 5, 7), (2, 2, 64, 20), (1, 2, 3, 40)]:
        if fam.hidden_follows_heads:
            h = k * d
        small = fam.pruned_config(cfg, n_layer=L, head_units=k, ffn=F, hidden=h)
        assert fam.count_pruned(cfg, n_layer=L, head_units=k, ffn=F, hidden=h) == instantiated_count(small)
        assert fam.unit_counts(small) == dict(layer=L, head=k, neuron=F, hidden=h)


def test_families_are_registered_with_matching_model_types():
    host = get_host()
    assert {"gpt2", "llama"} <= set(host.names("family"))
    for cfg in (tiny_gpt2_config(), tiny_llama_config()):
        matches = [n for n in host.names("family") if host.create("family", n).model_type == cfg.model_type]
        assert matches == [cfg.model_type]


def test_shape_string_and_layer_names():
    fam = family("llama")
    assert fam.shape_string(tiny_llama_config(n_layer=2, n_head=4, hidden=32, ffn=64)) == "L2·H4·d8·F64"
    assert fam.shape_string(tiny_llama_config(n_head=4, hidden=40, head_dim=6)) == "L2·H4·d6·F64·E40"
    assert fam.layer_of("model.layers.12.mlp.up_proj.weight") == 12 and fam.layer_of("model.norm.weight") is None
    assert fam.rename_layer("model.layers.12.mlp.up_proj.weight", 3) == "model.layers.3.mlp.up_proj.weight"
