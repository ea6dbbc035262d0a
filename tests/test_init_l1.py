"""The ``l1`` initializer: structured pruning that really slices, keeps the teacher's function
when nothing is pruned, hits targets, respects layer_bound, and inherits the teacher's knowledge."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_models import (
    build,
    lm_batch,
    lm_loss,
    tiny_gpt2_config,
    tiny_llama_config,
    toy_corpus,
    train_tiny,
)
from transformers import AutoModelForCausalLM

from wml_framework import config as cfgmod
from wml_framework.api import peer_targets
from wml_framework.plugin_system.host import PluginError, get_host
from wml_plugins.init.l1.importance import (
    Importance,
    calibration_gradients,
    unit_importance,
)
from wml_plugins.init.l1.plan import min_kept, plan_pruning, smallest_parameters
from wml_plugins.init.l1.slice import prune_model, select_units

DEFAULTS = cfgmod.from_dict({}, check_plugins=False)     # prune_importance 'l1', layer_bound 0.9
VOCAB = 256


def l1(**changes):
    return get_host().create("initializer", "l1", DEFAULTS.replace(**changes) if changes else DEFAULTS)


def family_of(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    return get_host().create("family", config.model_type)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


VARIANTS = {
    "gpt2": tiny_gpt2_config(vocab_size=VOCAB, n_embd=48, n_head=4, n_inner=96),
    "gpt2-untied": tiny_gpt2_config(vocab_size=VOCAB, n_embd=48, n_head=4, n_inner=96, tie_word_embeddings=False),
    "llama": tiny_llama_config(vocab_size=VOCAB, hidden=48, ffn=96),
    "llama-gqa-bias-tied": tiny_llama_config(vocab_size=VOCAB, hidden=48, n_head=6, n_kv_head=2, ffn=96,
                                             attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
}


# -- pruning nothing is the identity ------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_pruning_nothing_reproduces_the_teachers_logits(name):
    teacher = build(VARIANTS[name], seed=1)
    family = family_of(teacher)
    n = n_params(teacher)
    result = l1().build(teacher, family, [n])
    peer = result.peers[0]
    assert peer is not teacher and result.rows[0]["parameters"] == n and result.rows[0]["rel_error"] == 0
    ids = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        delta = (peer(input_ids=ids).logits - teacher(input_ids=ids).logits).abs().max().item()
    assert delta < 1e-5
    assert result.trace[0]["removed"]["layers"] == [] and result.trace[0]["removed"]["hidden"] == []


# -- importance: the norms of exactly the weights that belong to a unit ---------------------------
def test_gpt2_importance_matches_hand_slicing():
    model = build(VARIANTS["gpt2-untied"], seed=2).double()   # sums compared in float64
    family = family_of(model)
    imp = unit_importance(model, family, "l1")
    h, d = 48, 12
    blk = model.transformer.h[1]
    W, b = blk.attn.c_attn.weight.detach(), blk.attn.c_attn.bias.detach()   # Conv1D: (in, 3h)
    head = 2
    cols = [part * h + head * d + j for part in range(3) for j in range(d)]
    expected = (W[:, cols].abs().sum() + b[cols].abs().sum()
                + blk.attn.c_proj.weight.detach()[head * d:(head + 1) * d].abs().sum())
    assert imp.head[1, head].item() == pytest.approx(expected.item(), rel=1e-9)
    neuron = 7
    expected = (blk.mlp.c_fc.weight[:, neuron].abs().sum() + blk.mlp.c_fc.bias[neuron].abs()
                + blk.mlp.c_proj.weight[neuron].abs().sum())
    assert imp.neuron[1, neuron].item() == pytest.approx(expected.item(), rel=1e-9)
    dim = 5
    a = lambda t: t.detach().abs().sum()  # noqa: E731
    tr = model.transformer
    expected = a(tr.wte.weight[:, dim]) + a(tr.wpe.weight[:, dim]) + a(model.lm_head.weight[:, dim])
    expected += a(tr.ln_f.weight[dim]) + a(tr.ln_f.bias[dim])
    for blk_ in tr.h:
        expected += sum(a(ln.weight[dim]) + a(ln.bias[dim]) for ln in (blk_.ln_1, blk_.ln_2))
        expected += a(blk_.attn.c_attn.weight[dim]) + a(blk_.mlp.c_fc.weight[dim])              # inputs
        expected += sum(a(m.weight[:, dim]) + a(m.bias[dim]) for m in (blk_.attn.c_proj, blk_.mlp.c_proj))
    assert imp.hidden[dim].item() == pytest.approx(expected.item(), rel=1e-9)
    whole = sum(p.detach().abs().sum() for n, p in model.named_parameters() if n.startswith("transformer.h.0."))
    assert imp.layer[0].item() == pytest.approx(whole.item(), rel=1e-9)


def test_llama_gqa_head_unit_is_a_kv_head_with_its_query_heads():
    model = build(VARIANTS["llama-gqa-bias-tied"], seed=3).double()
    imp = unit_importance(model, family_of(model), "l2")
    att = model.model.layers[0].self_attn
    d, ratio, group = 8, 3, 1                         # 6 query heads share 2 kv heads
    q = slice(group * ratio * d, (group + 1) * ratio * d)
    kv = slice(group * d, (group + 1) * d)
    sq = (att.q_proj.weight[q].square().sum() + att.q_proj.bias[q].square().sum()
          + att.k_proj.weight[kv].square().sum() + att.k_proj.bias[kv].square().sum()
          + att.v_proj.weight[kv].square().sum() + att.v_proj.bias[kv].square().sum()
          + att.o_proj.weight[:, q].square().sum())
    assert imp.head.shape == (2, 2)
    assert imp.head[0, group].item() == pytest.approx(sq.sqrt().item(), rel=1e-9)


def test_taylor_gradients_agree_with_finite_differences():
    model = build(tiny_gpt2_config(vocab_size=50, n_embd=16, n_head=2, n_layer=1), seed=4).double()
    batch = lm_batch(torch.randint(0, 50, (2, 10)))
    grads = calibration_gradients(model, batch)
    assert all(p.grad is None for p in model.parameters())          # the model is left untouched

    def loss() -> float:
        with torch.no_grad():
            logits = model(input_ids=batch.inputs).logits
            return torch.nn.functional.cross_entropy(logits.reshape(-1, 50), batch.labels.reshape(-1),
                                                     ignore_index=-100).item()

    eps = 1e-6
    for name, index in [("transformer.h.0.attn.c_attn.weight", (3, 20)), ("transformer.wte.weight", (7, 2)),
                        ("transformer.h.0.mlp.c_proj.bias", (5,))]:
        p = dict(model.named_parameters())[name]
        with torch.no_grad():
            p[index] += eps
            up = loss()
            p[index] -= 2 * eps
            down = loss()
            p[index] += eps
        assert grads[name][index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


# -- plans ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("fraction", [0.7, 0.4, 0.2])
def test_plans_hit_targets_within_the_bound(name, fraction):
    cfg = VARIANTS[name]
    family = family_of(cfg)
    target = round(family.count_parameters(cfg) * fraction)
    plan = plan_pruning(family, cfg, target, layer_bound=0.9)
    units = family.unit_counts(cfg)
    assert plan.rel_error < 0.02
    for unit, kept in dict(layer=plan.n_layer, head=plan.head_units, neuron=plan.ffn, hidden=plan.hidden).items():
        assert min_kept(units[unit], 0.9) <= kept <= units[unit]
    assert plan.hidden % (plan.head_units * family.head_group(cfg)) == 0


def test_whole_layers_go_only_when_needed():
    cfg = tiny_llama_config(vocab_size=32, n_layer=6, hidden=48, ffn=128)
    family = family_of(cfg)
    n = family.count_parameters(cfg)
    assert plan_pruning(family, cfg, n // 2, layer_bound=0.5).n_layer == 6   # within-layer pruning suffices
    deep = plan_pruning(family, cfg, n // 5, layer_bound=0.5)                 # it does not: layers go
    assert deep.n_layer < 6 and deep.n_layer >= min_kept(6, 0.5) and deep.rel_error < 0.02
    teacher = build(cfg)
    result = l1(layer_bound=0.5).build(teacher, family, [n // 5])
    assert len(result.trace[0]["removed"]["layers"]) == 6 - deep.n_layer
    assert result.peers[0].config.num_hidden_layers == deep.n_layer


# -- the acceptance run on trained teachers -------------------------------------------------------
@pytest.fixture(scope="module", params=["gpt2", "llama"])
def trained(request):
    """A teacher trained 300 steps on a toy grammar, and held-out text."""
    cfg = {"gpt2": tiny_gpt2_config(vocab_size=VOCAB, n_embd=64, n_head=4, n_inner=256),
           "llama": tiny_llama_config(vocab_size=VOCAB, hidden=64, n_head=4, ffn=192)}[request.param]
    tokens = toy_corpus(VOCAB, 600, 48, seed=0)
    teacher = train_tiny(build(cfg, seed=0), tokens[:500], steps=300)
    return teacher, tokens[:500], tokens[500:]


@pytest.mark.slow
def test_pruned_peers_hit_targets_load_and_inherit_knowledge(trained, tmp_path):
    teacher, _, held = trained
    family = family_of(teacher)
    n = n_params(teacher)
    targets = peer_targets(n, 4)
    result = l1().build(teacher, family, targets)
    teacher_loss = lm_loss(teacher, held)
    print(f"\n{family.name} teacher N={n:,}: held-out loss {teacher_loss:.3f}")
    for i, (peer, row, target) in enumerate(zip(result.peers, result.rows, targets)):
        assert n_params(peer) == row["parameters"] and abs(row["parameters"] - target) / target <= 0.02
        assert n_params(peer) < n and row["shape"] == family.shape_string(peer.config)
        peer.save_pretrained(tmp_path / f"peer_{i}")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / f"peer_{i}").eval()
        assert type(loaded) is type(teacher) and n_params(loaded) == n_params(peer)
        ids = held[:2]
        with torch.no_grad():
            assert torch.allclose(loaded(input_ids=ids).logits, peer(input_ids=ids).logits, atol=1e-6)
        pruned_loss = lm_loss(loaded, held)
        random_loss = lm_loss(build(peer.config, seed=11), held)
        print(f"  {row['shape']:<20} {row['parameters']:>7,} ({row['rel_error']:.2%} off) held-out loss "
              f"{pruned_loss:.3f}, random init of the same shape {random_loss:.3f}")
        assert pruned_loss < 0.75 * random_loss and random_loss - pruned_loss > 1.5


@pytest.mark.slow
def test_keeping_the_most_important_units_beats_keeping_the_least(trained):
    """The ranking points the right way: the same plan keeping the least important units is worse."""
    teacher, _, held = trained
    family = family_of(teacher)
    plan = plan_pruning(family, teacher.config, n_params(teacher) // 2, layer_bound=0.9)
    imp = unit_importance(teacher, family, "l1")
    flipped = Importance(kind="anti", head=-imp.head, neuron=-imp.neuron, hidden=-imp.hidden, layer=-imp.layer)
    good = lm_loss(prune_model(teacher, family, select_units(imp, plan), plan), held)
    bad = lm_loss(prune_model(teacher, family, select_units(flipped, plan), plan), held)
    assert good < bad


@pytest.mark.slow
def test_taylor_importance_prunes_with_a_calibration_batch(trained):
    teacher, train, held = trained
    family = family_of(teacher)
    target = n_params(teacher) // 2
    result = l1(prune_importance="taylor").build(teacher, family, [target], calibration=lm_batch(train[:16]))
    peer = result.peers[0]
    assert result.trace[0]["importance"] == "taylor" and result.rows[0]["rel_error"] <= 0.02
    assert lm_loss(peer, held) < 0.75 * lm_loss(build(peer.config, seed=11), held)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bound", [0.0, 1.0, 1.5, -0.2])
def test_layer_bound_outside_open_unit_interval_is_rejected(bound):
    with pytest.raises(PluginError, match=r"init_l1.*layer_bound must lie in \(0, 1\)"):
        l1_bad = cfgmod.WMLConfig(layer_bound=bound)      # bypasses config validation on purpose
        get_host().create("initializer", "l1", l1_bad)


def test_target_smaller_than_any_pruned_model_is_rejected_before_work(monkeypatch):
    cfg = VARIANTS["llama"]
    family = family_of(cfg)
    smallest = smallest_parameters(family, cfg, 0.5)
    init = l1(layer_bound=0.5)
    with pytest.raises(ValueError, match="smaller than the smallest model pruning may leave"):
        init.check(cfg, family, [smallest - 1])
    init.check(cfg, family, [smallest])

    def no_work(*args, **kwargs):
        raise AssertionError("importance was computed before the targets were checked")

    monkeypatch.setattr("wml_plugins.init.l1.unit_importance", no_work)
    with pytest.raises(ValueError, match="smaller than the smallest"):
        init.build(build(cfg), family, [family.count_parameters(cfg) // 2, smallest - 1])
    assert smallest > smallest_parameters(family, cfg, 0.9)
    with pytest.raises(ValueError, match="exceeds the teacher"):
        init.check(cfg, family, [family.count_parameters(cfg) + 1])


def test_taylor_without_calibration_and_wrong_family_are_rejected():
    cfg = VARIANTS["gpt2"]
    with pytest.raises(ValueError, match="calibration batch"):
        l1(prune_importance="taylor").check(cfg, family_of(cfg), [1000])
    with pytest.raises(ValueError, match="model_type 'llama'"):
        l1().check(cfg, get_host().create("family", "llama"), [1000])
    with pytest.raises(ValueError, match="cross-attention"):
        l1().check(tiny_gpt2_config(add_cross_attention=True), family_of(cfg), [1000])


class CountOnlyFamily:
    """A family of the right model_type that describes no prunable units (nor sizable shapes)."""

    name, model_type = "count-only-gpt2", "gpt2"


@pytest.mark.parametrize("initializer,message", [
    ("l1", "l1: family 'count-only-gpt2' cannot be pruned: it does not describe its prunable units "
           "(see wml_framework.api.PrunableFamily)"),
    ("bayes", "bayes: family 'count-only-gpt2' cannot be sized: it lacks count_shapes or head_dim_multiple "
              "(see wml_framework.api.SizableFamily)"),
])
def test_both_initializers_open_check_with_the_same_family_and_target_checks(initializer, message):
    """Would catch: either initializer losing the shared opening of check() (wml_plugins/init/common.py)."""
    init = get_host().create("initializer", initializer, DEFAULTS)
    cfg = VARIANTS["gpt2"]
    with pytest.raises(ValueError, match="model_type 'llama'"):
        init.check(cfg, get_host().create("family", "llama"), [1000])
    with pytest.raises(ValueError) as err:
        init.check(cfg, CountOnlyFamily(), [1000])
    assert str(err.value) == message
    with pytest.raises(ValueError, match=f"{initializer}: no peer targets"):
        init.check(cfg, family_of(cfg), [])


def test_min_kept_never_removes_more_than_the_bound():
    for n in range(1, 40):
        for bound in (0.1, 0.5, 0.9, 0.99):
            k = min_kept(n, bound)
            assert 1 <= k <= n and (n - k) / n <= bound + 1e-12 and (k == 1 or (n - k + 1) / n > bound)
    assert math.isclose(min_kept(10, 0.9), 1)
