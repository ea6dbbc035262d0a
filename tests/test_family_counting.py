"""Families of any Hugging Face architecture: exact counts from meta builds, the fitted vectorised
count, configs built from a base or from nothing, adoption of unnamed model types.

Also the tiny configs of every family the other ``test_family_*`` modules use (:func:`tiny_family_config`).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, PretrainedConfig

from wml_framework.api import build_model, model_class
from wml_framework.plugin_system.host import get_host
from wml_framework.training.families import UnknownFamilyError, family_for
from wml_plugins.families.counting import Point, fit_counter, meta_count
from wml_plugins.families.standard import GenericFamily
from wml_plugins.init.bayes.space import SizingSpace

#: the causal families the end-to-end tests cover, and the encoders
CAUSAL = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "phi", "gemma")
ENCODERS = ("roberta", "bert", "deberta-v2")
NAMED = ("qwen2", "gpt_neox", "opt", "phi", "gemma", "roberta", "bert", "deberta-v2")
_EXTRA = {
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64),
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2, head_dim=16),
    "qwen2": dict(num_key_value_heads=2),
    "phi": dict(num_key_value_heads=2),
    "gemma": dict(num_key_value_heads=2, head_dim=16),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "roberta": dict(pad_token_id=1, max_position_embeddings=66),
}


def tiny_family_config(model_type: str, vocab_size: int = 96, **changes):
    """A 2-layer, 4-head, width-64 config of ``model_type`` (head size 16, FFN 128, 64 positions),
    special tokens 0/1 (encoders: pad 0, RoBERTa pad 1)."""
    base = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                pad_token_id=None if model_type not in ENCODERS else 0)
    if model_type == "gpt2":
        base = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1)
    return AutoConfig.for_model(model_type, **{**base, **_EXTRA.get(model_type, {}), **changes})


def host():
    return get_host()


def built_count(config, seed: int = 0) -> int:
    torch.manual_seed(seed)
    return sum(p.numel() for p in build_model(config).parameters())


# -- meta counts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", CAUSAL + ENCODERS)
def test_every_family_counts_exactly_what_a_real_build_has(model_type):
    """The family found for a config counts exactly the parameters of the model built on the CPU.
    Would catch: a meta build that differs from a real one (tied weights counted twice), a family
    that counts another class than the one wml builds (encoders: the masked-LM head)."""
    cfg = tiny_family_config(model_type, tie_word_embeddings=False)
    fam = family_for(host(), cfg)
    assert fam.model_type == model_type
    assert fam.count_parameters(cfg) == built_count(cfg) == meta_count(cfg)
    tied = tiny_family_config(model_type, tie_word_embeddings=True)
    assert fam.count_parameters(tied) == built_count(tied) < fam.count_parameters(cfg)


def _gpt2(draw):
    n_head = draw(st.integers(1, 4))
    return AutoConfig.for_model(
        "gpt2", vocab_size=draw(st.integers(5, 300)), n_layer=draw(st.integers(1, 3)), n_head=n_head,
        n_embd=n_head * draw(st.integers(1, 12)), n_inner=draw(st.one_of(st.none(), st.integers(1, 70))),
        n_positions=draw(st.integers(1, 80)), tie_word_embeddings=draw(st.booleans()),
        add_cross_attention=draw(st.booleans()), bos_token_id=0, eos_token_id=0)


def _llama(draw):
    n_kv = draw(st.integers(1, 3))
    n_head = n_kv * draw(st.integers(1, 3))
    head_dim = 2 * draw(st.integers(1, 8))
    hidden = draw(st.sampled_from([n_head * head_dim, n_head * draw(st.integers(1, 12))]))
    return AutoConfig.for_model(
        "llama", vocab_size=draw(st.integers(5, 300)), num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=n_head, num_key_value_heads=n_kv, hidden_size=hidden, head_dim=head_dim,
        intermediate_size=draw(st.integers(1, 70)), max_position_embeddings=draw(st.integers(1, 80)),
        tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_gpt2_and_llama_closed_forms_equal_the_meta_count(data):
    """The closed forms stay as the fast path, equal to the meta count for any config (cross-attention,
    untied heads, biases, grouped-query attention, width ≠ heads × head size)."""
    cfg = data.draw(st.sampled_from([_gpt2, _llama]))(data.draw)
    assert family_for(host(), cfg).count_parameters(cfg) == meta_count(cfg)


@pytest.mark.parametrize("cfg", [
    AutoConfig.for_model("gpt2", vocab_size=90, n_layer=3, n_head=4, n_embd=32, n_positions=40, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1),
    AutoConfig.for_model("llama", vocab_size=70, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                         hidden_size=48, intermediate_size=96, attention_bias=True, mlp_bias=True),
], ids=["gpt2", "llama"])
def test_the_fitted_count_equals_the_closed_forms_over_the_whole_bayes_grid(cfg):
    """The generic path (a spec read from the config's fields, a polynomial fitted from meta builds)
    gives, on every point of the sizing grid, the hand-written closed form's count. Would catch a fit
    that is right where it was fitted (small shapes) and wrong at the teacher's size."""
    closed = family_for(host(), cfg)
    generic = GenericFamily().adopt(cfg)      # read from the config's fields: the fitted path
    assert generic.counter(cfg) is not None
    shapes, counts = SizingSpace.from_teacher(closed, cfg).grid
    fitted = generic.count_shapes(cfg, n_layer=shapes[:, 0], n_head=shapes[:, 1], head_dim=shapes[:, 2],
                                  ffn=shapes[:, 3])
    assert len(shapes) > 500 and np.array_equal(fitted, counts)


@pytest.mark.parametrize("model_type", ["mistral", *NAMED, "qwen3", "starcoder2"])
def test_count_shapes_is_exact_on_random_shapes_of_each_family(model_type):
    """Vectorised counts over shapes copied from a base equal the meta count of each built config:
    hidden ≠ heads × head size where the family has an explicit head size, any key/value grouping
    where it has grouped-query attention. A fit exists for every named family (no slow path)."""
    base = tiny_family_config(model_type, **({"num_key_value_heads": 2} if model_type == "qwen3" else {}))
    fam = family_for(host(), base)
    assert fam.counter(base) is not None
    m = fam.head_dim_multiple_for(base)
    rng = random.Random(1)
    shapes = []
    for _ in range(12):
        K = rng.randint(1, 3) if fam.spec.kv_heads else None
        H = K * rng.randint(1, 4) if K else rng.randint(1, 8)
        d = m * rng.randint(1, 40 // m + 1)
        h = H * rng.randint(1, 24) if not fam.hidden_follows_heads else H * d
        shapes.append((rng.randint(1, 6), H, K, d, h, rng.randint(1, 400)))
    L, H, K, d, h, F = (np.array([s[i] for s in shapes]) for i in range(6))
    counts = fam.count_shapes(base, n_layer=L, n_head=H, head_dim=d, ffn=F, hidden=h,
                              n_kv_head=K if fam.spec.kv_heads else None)
    for i, (L_, H_, K_, d_, h_, F_) in enumerate(shapes):
        cfg = fam.make_config(vocab_size=base.vocab_size, n_layer=L_, n_head=H_, head_dim=d_, ffn=F_,
                              max_positions=fam.max_positions(base), base=base, hidden=h_, n_kv_head=K_)
        assert fam.shape(cfg) == dict(n_layer=L_, n_head=H_, head_dim=d_, hidden=h_, ffn=F_)
        assert counts[i] == meta_count(cfg), (model_type, shapes[i])


def test_a_fit_is_kept_only_where_it_is_exact():
    """A count with a cubic term is no polynomial of the fitted kind: no fit. A count that departs
    from one only at the base's own shape is caught by checking that shape. Then the family counts
    shape by shape, still exactly."""
    def draw(rng):
        H = rng.randint(1, 4)
        d = rng.randint(1, 8)
        return Point(rng.randint(1, 3), H * d, H, H, d, rng.randint(1, 60))

    quadratic = lambda p: 7 + 3 * p.h + p.L * (4 * p.h * p.h + 2 * p.h * p.F + p.F + 5)  # noqa: E731
    fit = fit_counter(draw, quadratic)
    assert fit is not None and fit.terms() == {"1": 7, "h": 3, "L": 5, "L*F": 1, "L*h*h": 4, "L*h*F": 2}
    assert fit_counter(draw, lambda p: quadratic(p) + p.h ** 3) is None
    big = Point(12, 768, 12, 12, 64, 3072)
    odd = lambda p: quadratic(p) + (1 if p.h > 500 else 0)  # noqa: E731
    assert fit_counter(draw, odd) is not None and fit_counter(draw, odd, must_check=[big]) is None


def test_without_a_fit_count_shapes_counts_shape_by_shape(monkeypatch):
    base = tiny_family_config("gpt_neox")
    fam = family_for(host(), base)
    monkeypatch.setattr(type(fam), "counter", lambda self, base: None)
    counts = fam.count_shapes(base, n_layer=np.array([1, 2]), n_head=np.array([2, 3]), head_dim=np.array([8, 16]),
                              ffn=np.array([5, 77]))
    for i, (L, H, d, F) in enumerate([(1, 2, 8, 5), (2, 3, 16, 77)]):
        cfg = fam.make_config(vocab_size=96, n_layer=L, n_head=H, head_dim=d, ffn=F, max_positions=64, base=base)
        assert counts[i] == built_count(cfg)


# -- configs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama", *NAMED])
def test_make_config_without_a_base_builds_the_family_from_scratch(name):
    """A teacher trained from scratch of any registered family: the shape asked for, the special
    tokens given, the family's class (encoders: masked LM), the usable context asked for."""
    fam = host().create("family", name)
    hidden = 48
    cfg = fam.make_config(vocab_size=60, n_layer=2, n_head=4, head_dim=12 if name != "gpt_neox" else 16,
                          ffn=fam.default_ffn(hidden), max_positions=40, bos_token_id=3, eos_token_id=4, pad_token_id=2)
    d = 12 if name != "gpt_neox" else 16
    assert cfg.model_type == fam.model_type and fam.max_positions(cfg) == 40
    assert fam.shape(cfg) == dict(n_layer=2, n_head=4, head_dim=d, hidden=4 * d, ffn=fam.default_ffn(hidden))
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (3, 4, 2)
    assert fam.default_ffn(hidden) == (128 if name in ("llama", "qwen2", "gemma") else 192)   # gated: ≈ 8h/3, else 4h
    model = build_model(cfg)
    masked = name in ENCODERS
    assert ("MaskedLM" in type(model).__name__) == masked and ("CausalLM" in type(model).__name__ or "LMHead" in
                                                              type(model).__name__) != masked
    assert fam.count_parameters(cfg) == sum(p.numel() for p in model.parameters())
    model.eval()(input_ids=torch.randint(5, 60, (1, 40)))          # the whole usable context runs


@pytest.mark.parametrize("pad", [1, 0, 5])
def test_roberta_positions_are_offset_by_the_padding_id(pad):
    """RoBERTa's table holds pad + 1 rows before the first position: ``max_positions`` is the usable
    length, ``make_config`` adds the offset back, and exactly that many tokens run."""
    fam = host().create("family", "roberta")
    cfg = fam.make_config(vocab_size=50, n_layer=1, n_head=2, head_dim=8, ffn=32, max_positions=40, pad_token_id=pad)
    assert cfg.max_position_embeddings == 40 + pad + 1 and fam.max_positions(cfg) == 40
    model = build_model(cfg).eval()
    ids = torch.randint(6, 50, (1, 41))
    assert model(input_ids=ids[:, :40]).logits.shape == (1, 40, 50)
    with pytest.raises((IndexError, RuntimeError)):
        model(input_ids=ids)
    peer = fam.make_config(vocab_size=50, n_layer=1, n_head=1, head_dim=8, ffn=8, max_positions=fam.max_positions(cfg),
                           base=cfg)
    assert peer.max_position_embeddings == cfg.max_position_embeddings


def test_make_config_from_a_base_keeps_the_familys_own_choices():
    """Only the shape changes: activation, residual layout, rotary fraction, tying, norm settings stay;
    fields equal to the width follow it; per-layer lists follow the depth."""
    fam = family_for(host(), tiny_family_config("gpt_neox"))
    neox = tiny_family_config("gpt_neox", hidden_act="relu", use_parallel_residual=False, tie_word_embeddings=True,
                              layer_norm_eps=1e-3, rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                                    "partial_rotary_factor": 0.5})
    peer = fam.make_config(vocab_size=96, n_layer=1, n_head=2, head_dim=8, ffn=40, max_positions=64, base=neox)
    assert (peer.hidden_act, peer.use_parallel_residual, peer.tie_word_embeddings, peer.layer_norm_eps) == \
        ("relu", False, True, 1e-3)
    assert peer.rope_parameters == neox.rope_parameters and fam.head_dim_multiple_for(neox) == 4
    assert neox.num_hidden_layers == 2 and neox.hidden_size == 64                  # the base untouched

    opt = tiny_family_config("opt")
    small = family_for(host(), opt).make_config(vocab_size=96, n_layer=1, n_head=2, head_dim=16, ffn=40,
                                                 max_positions=64, base=opt)
    assert small.word_embed_proj_dim == small.hidden_size == 32                # no projection appears
    assert not any("project" in n for n, _ in build_model(small).named_parameters())

    qwen = tiny_family_config("qwen2", num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert len(qwen.layer_types) == 4
    q1 = family_for(host(), qwen).make_config(vocab_size=96, n_layer=3, n_head=2, head_dim=16, ffn=40,
                                              max_positions=64, base=qwen)
    assert q1.layer_types == qwen.layer_types[:3]


@pytest.mark.parametrize("model_type,multiple", [("gpt_neox", 8), ("phi", 4), ("qwen2", 2), ("gemma", 2),
                                                 ("opt", 1), ("bert", 1)])
def test_head_sizes_keep_rotary_dimensions_even(model_type, multiple):
    """GPT-NeoX rotates 1/4 of each head, Phi 1/2: head sizes must be multiples of 8 and 4, and the
    sizing grid holds no other. A Phi head of 10 (5 rotary dimensions) does not even run."""
    cfg = tiny_family_config(model_type)
    fam = family_for(host(), cfg)
    assert fam.head_dim_multiple_for(cfg) == multiple
    head_dims = SizingSpace.from_teacher(fam, cfg).values["head_dim"]
    assert len(head_dims) and all(d % multiple == 0 for d in head_dims)
    if model_type == "phi":
        bad = fam.make_config(vocab_size=96, n_layer=1, n_head=2, head_dim=10, ffn=16, max_positions=64, base=cfg)
        with pytest.raises(RuntimeError):
            build_model(bad)(input_ids=torch.randint(0, 96, (1, 4)))


# -- which family ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["mistral", "qwen3", "starcoder2", "stablelm"])
def test_an_unnamed_model_type_with_the_standard_fields_is_adopted(model_type):
    extra = {"qwen3": dict(num_key_value_heads=2, head_dim=16), "stablelm": dict(num_key_value_heads=2)}.get(model_type, {})
    cfg = tiny_family_config(model_type, **extra)
    fam = family_for(host(), cfg)
    assert fam.model_type == fam.name == model_type and fam.layer_prefix == "model.layers."
    assert fam.count_parameters(cfg) == built_count(cfg)
    assert fam.shape_string(cfg) == "L2·H4·d16·F128"


def test_a_model_type_without_the_standard_fields_gets_one_line_saying_what_would_work():
    class ToyConfig(PretrainedConfig):
        model_type = "toy_lm"

    with pytest.raises(UnknownFamilyError) as err:
        family_for(host(), ToyConfig(n_blocks=2))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("no model family plugin handles model_type 'toy_lm'; registered families: ")
    assert "gpt2" in text and "roberta" in text and "standard" in text
    assert "num_hidden_layers, num_attention_heads, hidden_size and an FFN width" in text
    assert "lacks num_hidden_layers, num_attention_heads, hidden_size, an FFN width" in text

    t5 = AutoConfig.for_model("t5", vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8)
    with pytest.raises(UnknownFamilyError, match="'t5' has no causal-LM or masked-LM class"):
        family_for(host(), t5)
    with pytest.raises(ValueError):
        model_class(t5)


def test_standard_needs_a_teacher_to_adopt():
    with pytest.raises(ValueError, match="name a family"):
        host().create("family", "standard").make_config(vocab_size=5, n_layer=1, n_head=1, head_dim=2, ffn=2,
                                                        max_positions=4)
