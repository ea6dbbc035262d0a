"""The ``bayes`` initializer: targets, Bayesian sizing against exhaustive search, diversity, errors."""

from __future__ import annotations

import pytest
import torch
from helpers_models import tiny_gpt2_config, tiny_llama_config
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from wml_framework import config as cfgmod
from wml_framework.api import peer_targets
from wml_framework.plugin_system.host import PluginError, get_host
from wml_plugins.init.bayes.search import search_shape
from wml_plugins.init.bayes.space import (
    ARCH,
    VARIABLES,
    SizingSpace,
    arch_key,
    grid_step,
    shape_key,
)

SEED_CARD = cfgmod.from_dict({}, check_plugins=False)   # bayesian_init_points 10, bayesian_n_iter 100


def meta_teacher(config):
    """The initializer reads only the teacher's config and dtype: no need for real weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def bayes(cfg=SEED_CARD):
    return get_host().create("initializer", "bayes", cfg)


def family_of(config):
    return get_host().create("family", config.model_type)


# -- targets -------------------------------------------------------------------------------------
def test_default_targets_are_n_over_2_to_n_over_m_plus_1():
    assert peer_targets(1200, 4) == [600, 400, 300, 240]
    assert peer_targets(1000, 1) == [500]


def test_fraction_targets_and_their_checks():
    assert peer_targets(1000, None, [0.5, 0.25]) == [500, 250]
    assert peer_targets(1000, 2, [0.5, 0.25]) == [500, 250]
    with pytest.raises(ValueError, match="2 peer fractions"):
        peer_targets(1000, 3, [0.5, 0.25])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        peer_targets(1000, None, [0.5, 1.5])


@pytest.mark.parametrize("m", [0, -1, None])
def test_fewer_than_one_peer_is_rejected(m):
    with pytest.raises(ValueError, match="at least 1"):
        peer_targets(1000, m)


# -- the acceptance run: seed-card budget, 1%, exhaustive comparison, distinct shapes ------------
# (how long sizing takes is measured by benchmarks, not asserted here: a shared machine's load would flake it)
GPT2_5M = GPT2Config(vocab_size=8192, n_positions=512, n_embd=256, n_layer=4, n_head=4, n_inner=1024,
                     bos_token_id=0, eos_token_id=0)
LLAMA_25M = LlamaConfig(vocab_size=8000, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        num_key_value_heads=8, intermediate_size=1376, max_position_embeddings=512)


@pytest.mark.slow
@pytest.mark.parametrize("config,size", [(GPT2_5M, 5.4e6), (LLAMA_25M, 27.2e6)], ids=["gpt2-5M", "llama-25M"])
def test_seed_card_budget_hits_every_target_within_one_percent(config, size):
    family = family_of(config)
    n = family.count_parameters(config)
    assert abs(n - size) / size < 0.01
    targets = peer_targets(n, 4)
    init = bayes()
    result = init.build(meta_teacher(config), family, targets, seed=1337)

    base = init.peer_base(config)
    efficient = SizingSpace.from_teacher(family, base, init.width_multiple)
    any_shape = SizingSpace.from_teacher(family, base)
    taken = []
    for row, peer, target in zip(result.rows, result.peers, targets):
        # preference: efficient and new layers/heads/width, any shape with new ones, efficient with a new shape
        tiers = [(space, by) for by in (ARCH, "shape") for space in (efficient, any_shape)
                 if space.exhaustive_best(target, exclude=taken, by=by)[1] <= 0.01]
        space, by = tiers[0]
        assert efficient_shape(family.shape(peer.config), init.width_multiple) == (space is efficient)
        best, exhaustive = space.exhaustive_best(target, exclude=taken, by=by)   # same space, same exclusions
        print(f"  {row['shape']:<18} {row['parameters']:>11,} target {target:>11,} "
              f"BO {row['rel_error']:.4%}  exhaustive {exhaustive:.4%} ({space.kind}, new {by})")
        assert row["rel_error"] <= max(0.01, exhaustive)
        assert row["rel_error"] < 0.01
        assert row["parameters"] == sum(p.numel() for p in peer.parameters())
        assert row["shape"] == family.shape_string(peer.config)
        if by == ARCH:
            assert arch_key(family.shape(peer.config)) not in {arch_key(t) for t in taken}
            assert row["shares_layers_heads_width_with"] == [] and "note" not in row
        taken.append(family.shape(peer.config))
    assert len({r["shape"] for r in result.rows}) == 4
    assert len(result.trace) >= 4 * (10 + 100)
    assert all({"peer", "parameters", "error", "n_layer", "n_head", "head_dim", "ffn"} <= set(p) for p in result.trace)


# -- peers differ in layers, heads or width (the seed card's diversity) -----------------------------
#: the teacher of the report (issue 20 §7): GPT-2, 6 layers, width 256, vocabulary 8,000; 6,918,144 parameters
GPT2_7M = GPT2Config(vocab_size=8000, n_positions=512, n_embd=256, n_layer=6, n_head=4, bos_token_id=0, eos_token_id=0)


def layers_heads_width(peer) -> tuple:
    c = peer.config
    return c.n_layer, c.n_head, c.n_embd


def assert_distinct_within_one_percent(result, family, multiple):
    archs = [layers_heads_width(p) for p in result.peers]
    assert len(set(archs)) == len(archs), [r["shape"] for r in result.rows]
    for row, peer in zip(result.rows, result.peers):
        assert row["rel_error"] < 0.01
        assert row["parameters"] == sum(p.numel() for p in peer.parameters())
        assert efficient_shape(family.shape(peer.config), multiple), row["shape"]
        assert row["shares_layers_heads_width_with"] == [] and "note" not in row


@pytest.mark.parametrize("fractions", [[0.25, 0.25], [0.2, 0.2]])
def test_peers_of_the_reported_teacher_differ_in_layers_heads_or_width(fractions):
    """Would catch: peers that differ in FFN width only, L1·H10·d16·F824 and L1·H10·d16·F808
    (or L1·H4·d32·F880 and F888) on seed 3, as the search that avoided only whole shapes gave."""
    family = family_of(GPT2_7M)
    n = family.count_parameters(GPT2_7M)
    assert n == 6_918_144
    init = bayes(SEED_CARD.replace(bayesian_n_iter=40))
    targets = peer_targets(n, None, fractions)
    efficient = SizingSpace.from_teacher(family, init.peer_base(GPT2_7M), init.width_multiple)
    first = efficient.exhaustive_best(targets[0])[0]        # a distinct efficient shape exists within 1%
    assert efficient.exhaustive_best(targets[1], exclude=[first], by=ARCH)[1] < 0.01
    for seed in (3, 4):
        result = init.build(meta_teacher(GPT2_7M), family, targets, seed=seed)
        assert_distinct_within_one_percent(result, family, init.width_multiple)
        assert [sum(p["peer"] == i for p in result.trace) for i in (0, 1)] == [10 + 40] * 2   # one search each


def test_a_second_search_only_where_the_first_missed_and_never_the_same_one_twice():
    """The run time stays what it was: one search per peer, a second only after a miss of 1%.
    Would catch: searching every admissible space (or both ways of avoiding) for each peer, or
    re-running peer 0's search unchanged (with nothing taken, avoiding shapes or layers/heads/width
    is one search)."""
    config = tiny_gpt2_config(vocab_size=128, n_embd=48, n_inner=96)    # head size 12: the any space only
    family = family_of(config)
    result = bayes(SEED_CARD.replace(bayesian_n_iter=15)).build(
        meta_teacher(config), family, peer_targets(family.count_parameters(config), 2), seed=7)
    probes = [[p for p in result.trace if p["peer"] == i] for i in (0, 1)]
    assert {p["space"] for p in result.trace} == {"any"}
    assert result.rows[0]["rel_error"] > 0.01 and len(probes[0]) == 25       # missed, and nothing else to try
    first = [p["error"] for p in probes[1][:25] if not p["duplicate"]]
    assert len(probes[1]) == 50 and min(first) > 0.01                        # missed, one more search
    assert [p["avoid"] for p in probes[1]] == [ARCH] * 25 + ["shape"] * 25


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1337])
def test_the_reported_case_four_peers_at_the_seed_card_budget(seed):
    """The report: M = 4 at 10 + 100 probes gave L2·H4·d32·F984 and L2·H4·d32·F312 (both seeds)."""
    family = family_of(GPT2_7M)
    init = bayes()
    result = init.build(meta_teacher(GPT2_7M), family, peer_targets(family.count_parameters(GPT2_7M), 4), seed=seed)
    assert_distinct_within_one_percent(result, family, init.width_multiple)


#: one layer, one head, width 8: the only width within 1% of 35% of it is 3, so two such peers
#: can differ in FFN width alone
GPT2_FEW_SHAPES = tiny_gpt2_config(vocab_size=512, n_layer=1, n_head=1, n_embd=8, n_inner=16)


def test_peers_that_cannot_differ_share_layers_heads_width_and_the_table_says_why():
    """Would catch: a table silent about shared layers/heads/width, a note blaming the wrong
    reason, or a search that gives up the 1% to make the second peer distinct."""
    config = GPT2_FEW_SHAPES
    family = family_of(config)
    init = bayes(SEED_CARD.replace(bayesian_n_iter=20))
    targets = peer_targets(family.count_parameters(config), None, [0.35, 0.35])
    space = SizingSpace.from_teacher(family, init.peer_base(config), init.width_multiple)
    assert space.kind == "any"
    first, err = space.exhaustive_best(targets[0])
    assert err < 0.01 and space.exhaustive_best(targets[1], exclude=[first], by=ARCH)[1] > 0.01   # not distinct
    assert space.exhaustive_best(targets[1], exclude=[first])[1] < 0.01                           # but in reach

    # seed 3: in a space this small the search does not always land within 1% right next to a
    # taken shape (seeds 0, 1, 4 give F1, 1.3% off), the same before peers had to differ as after
    result = init.build(meta_teacher(config), family, targets, seed=3)
    a, b = result.rows
    assert layers_heads_width(result.peers[0]) == layers_heads_width(result.peers[1])
    assert a["shape"] != b["shape"] and a["rel_error"] < 0.01 and b["rel_error"] < 0.01
    assert a["shares_layers_heads_width_with"] == [1] and b["shares_layers_heads_width_with"] == [0]
    assert b["note"].startswith("same 1 layer, 1 head, width 3 as peer 0 (differs in FFN width only): "
                                "no shape of other layers, heads or width comes within 1% of the target")
    assert "see its note" in a["note"]


def efficient_shape(shape: dict, multiple: int) -> bool:
    return shape["hidden"] % multiple == 0 and shape["head_dim"] >= 16 and shape["hidden"] >= 16 * shape["n_layer"]


def default_teacher():
    from wml_framework.training.objective_fit import DEFAULT_FAMILIES
    from wml_framework.training.teacher import teacher_config

    cfg = cfgmod.from_dict({})

    class Vocab:
        bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

        def __len__(self):
            return cfg.vocab_size

    name = DEFAULT_FAMILIES["causal"] if cfg.teacher_family == "auto" else cfg.teacher_family  # the default objective's
    family = get_host().create("family", name)
    return family, teacher_config(family, cfg, Vocab(), max_positions=256)


@pytest.mark.slow
@pytest.mark.parametrize("multiple", [32, 64])
def test_default_peers_get_shapes_that_compute_well(multiple):
    """Would catch: a search that ignores the efficient space (widths like 48 or 72, heads of 8 or
    12, four layers of width 32), or one that gives up the 1% or the diversity for it."""
    family, config = default_teacher()
    init = get_host().create("initializer", "bayes", SEED_CARD.replace(bayesian_n_iter=40),
                             options={"width_multiple": multiple})
    targets = peer_targets(family.count_parameters(config), 4)
    result = init.build(meta_teacher(config), family, targets, seed=0)
    shapes = [family.shape(p.config) for p in result.peers]
    assert all(efficient_shape(s, multiple) for s in shapes), [r["shape"] for r in result.rows]
    assert all(r["rel_error"] < 0.01 for r in result.rows)
    assert len({r["shape"] for r in result.rows}) == 4
    assert all(p.config.tie_word_embeddings for p in result.peers)
    assert not config.tie_word_embeddings                   # the teacher's own config is left alone


@pytest.mark.slow
def test_a_teacher_too_narrow_for_efficient_widths_gets_any_shape_within_one_percent():
    config = tiny_llama_config(vocab_size=256, hidden=24, n_head=3, ffn=96)    # width 24 < 32, heads of 8
    family = family_of(config)
    result = bayes(SEED_CARD.replace(bayesian_n_iter=40)).build(meta_teacher(config), family,
                                                                peer_targets(family.count_parameters(config), 2), seed=0)
    assert all(r["rel_error"] < 0.01 for r in result.rows)
    assert {p["space"] for p in result.trace} == {"any"}


def test_width_multiple_one_and_untied_is_the_seed_cards_space():
    config = tiny_llama_config(vocab_size=256, hidden=64, ffn=192)
    family = family_of(config)
    init = get_host().create("initializer", "bayes", SEED_CARD, options={"width_multiple": 1, "tie_embeddings": False})
    assert init.peer_base(config) is config
    assert SizingSpace.from_teacher(family, config, init.width_multiple).kind == "any"
    tied = get_host().create("initializer", "bayes", SEED_CARD).peer_base(config)
    assert tied.tie_word_embeddings and family.count_parameters(tied) == family.count_parameters(config) - 256 * 64


@pytest.mark.slow
def test_peers_are_fresh_models_with_the_teachers_other_settings():
    teacher_cfg = tiny_llama_config(vocab_size=200, hidden=64, ffn=128, n_head=4, n_kv_head=2,
                                    rms_norm_eps=1e-4, tie_word_embeddings=True)
    teacher = AutoModelForCausalLM.from_config(teacher_cfg).eval()
    family = family_of(teacher_cfg)
    init = bayes(SEED_CARD.replace(bayesian_n_iter=20))
    targets = peer_targets(family.count_parameters(teacher_cfg), 2)
    result = init.build(teacher, family, targets, seed=3)
    again = init.build(teacher, family, targets, seed=3)
    for peer, twin in zip(result.peers, again.peers):
        c = peer.config
        assert (c.vocab_size, c.rms_norm_eps, c.tie_word_embeddings, c.bos_token_id) == (200, 1e-4, True, 0)
        assert c.num_attention_heads % c.num_key_value_heads == 0
        assert sum(p.numel() for p in peer.parameters()) < family.count_parameters(teacher_cfg)
        for (name, w), w2 in zip(peer.state_dict().items(), twin.state_dict().values()):
            assert torch.equal(w, w2), name           # seeded initialisation
        logits = peer(input_ids=torch.randint(0, 200, (1, 8))).logits
        assert logits.shape == (1, 8, 200) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_search_is_deterministic_for_a_seed_and_changes_with_it():
    cfg = tiny_gpt2_config(vocab_size=300, n_embd=64, n_inner=256)
    family, teacher = family_of(cfg), meta_teacher(cfg)
    targets = peer_targets(family.count_parameters(cfg), 2)
    init = bayes(SEED_CARD.replace(bayesian_n_iter=15))
    run = lambda seed: init.build(teacher, family, targets, seed=seed).trace  # noqa: E731
    first = run(5)
    assert first == run(5)
    assert first != run(6)


@pytest.mark.slow
def test_equal_targets_still_get_different_shapes():
    cfg = tiny_llama_config(vocab_size=256, hidden=64, ffn=192)
    family = family_of(cfg)
    n = family.count_parameters(cfg)
    result = bayes().build(meta_teacher(cfg), family, peer_targets(n, None, [0.4, 0.4, 0.4]), seed=0)
    assert len({r["shape"] for r in result.rows}) == 3
    assert all(r["rel_error"] < 0.01 for r in result.rows)


@pytest.mark.slow
def test_diversity_term_penalises_taken_shapes():
    """Mark every one-layer shape as taken: probes there are penalised, and the result avoids them."""
    cfg = tiny_llama_config(vocab_size=256, hidden=64, ffn=192)
    family = family_of(cfg)
    space = SizingSpace.from_teacher(family, cfg)
    shapes, _ = space.grid
    one_layer = [dict(zip(VARIABLES, map(int, row))) for row in shapes if row[0] == 1]
    taken = frozenset(shape_key(s) for s in one_layer)
    target = family.count_parameters(cfg) // 3
    res = search_shape(space, target, init_points=10, n_iter=40, seed=0, taken=taken, diversity=1.0)
    duplicates = [p for p in res.trace if p["duplicate"]]
    assert duplicates and all(p["n_layer"] == 1 for p in duplicates)
    assert all(p["objective"] == pytest.approx(-p["error"] - 1.0) for p in duplicates)
    assert all(p["objective"] == pytest.approx(-p["error"]) for p in res.trace if not p["duplicate"])
    assert res.shape["n_layer"] == 2
    _, exhaustive = space.exhaustive_best(target, exclude=one_layer)
    assert res.error <= max(0.01, exhaustive)


def test_grid_is_finer_for_small_teachers_and_even_for_rotary_heads():
    assert grid_step(64, 8) == 8 and grid_step(16, 8) == 2 and grid_step(1376, 64) == 8
    assert grid_step(192, 64) == 2
    assert grid_step(6, 8, multiple=2) == 2
    cfg = tiny_llama_config(hidden=48, n_head=8)                        # head size 6: steps of 2 at most
    space = SizingSpace.from_teacher(family_of(cfg), cfg)
    assert all(d % 2 == 0 for d in space.values["head_dim"])


# -- bad input stops before any search -----------------------------------------------------------
def test_target_smaller_than_any_model_is_rejected_before_searching(monkeypatch):
    cfg = tiny_gpt2_config(vocab_size=300, n_embd=64)
    family = family_of(cfg)
    init = bayes()
    smallest = SizingSpace.from_teacher(family, cfg).min_parameters
    with pytest.raises(ValueError, match="smaller than the smallest gpt2 model"):
        init.check(cfg, family, [smallest - 1])
    init.check(cfg, family, [smallest])

    def no_search(*args, **kwargs):
        raise AssertionError("a search ran before the targets were checked")

    monkeypatch.setattr("wml_plugins.init.bayes.search_shape", no_search)
    with pytest.raises(ValueError, match="smaller than the smallest"):
        init.build(meta_teacher(cfg), family, [family.count_parameters(cfg) // 2, smallest - 1])
    with pytest.raises(ValueError, match="exceeds the teacher"):
        init.check(cfg, family, [family.count_parameters(cfg) + 1])
    with pytest.raises(ValueError, match="at least 1"):
        init.check(cfg, family, [])


def test_family_must_match_the_teacher():
    cfg = tiny_gpt2_config()
    with pytest.raises(ValueError, match="model_type 'llama'"):
        bayes().check(cfg, get_host().create("family", "llama"), [1000])


@pytest.mark.parametrize("key,value", [("bayesian_init_points", 0), ("bayesian_n_iter", -1)])
def test_factory_rejects_bad_budgets_naming_the_plugin(key, value):
    bad = cfgmod.WMLConfig(**{key: value})     # bypasses config validation on purpose
    with pytest.raises(PluginError, match="init_bayes.*" + key):
        bayes(bad)
