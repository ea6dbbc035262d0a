"""``l1`` pruning of the standard families (Mistral, Qwen2, GPT-NeoX, OPT, Phi): axes read from a
meta-built model's parameter names through each family's module roles; and the one-line refusal
for every family without roles (Gemma, the encoders, adopted model types)."""

from __future__ import annotations

import pytest
import torch
from test_family_counting import tiny_family_config

from wml_framework.api import build_model, model_class, peer_targets
from wml_framework.plugin_system.host import get_host
from wml_framework.training.families import family_for
from wml_plugins.init.l1 import L1Initializer
from wml_plugins.init.l1.plan import PrunePlan
from wml_plugins.init.l1.slice import KeptUnits, prune_model, sliced_state

PRUNABLE = ("mistral", "qwen2", "gpt_neox", "opt", "phi")
#: where each family's MLP writes back to the residual stream (the neuron axis is its input)
MLP_OUT = {"mistral": "mlp.down_proj", "qwen2": "mlp.down_proj", "gpt_neox": "mlp.dense_4h_to_h",
           "opt": "fc2", "phi": "mlp.fc2"}


def teacher(model_type: str, seed: int = 0, **changes):
    cfg = tiny_family_config(model_type, **changes)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():                    # biases and norms away from their initial 0/1, so slicing shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, family_for(get_host(), cfg)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("model_type", PRUNABLE)
def test_l1_prunes_each_family_to_its_targets(model_type, tmp_path):
    """Every parameter has axes; three peers within 1% of N/2, N/3, N/4 with exact counts; each saved
    peer loads as the teacher's class and computes what it computed before saving."""
    model, fam = teacher(model_type)
    assert set(fam.prunable_axes(model.config)) == {n for n, _ in model.named_parameters()}
    n = sum(p.numel() for p in model.parameters())
    result = L1Initializer().build(model, fam, peer_targets(n, 3))
    ids = torch.randint(2, 96, (2, 12))
    for i, (peer, row) in enumerate(zip(result.peers, result.rows)):
        assert row["rel_error"] <= 0.01 and row["parameters"] == sum(p.numel() for p in peer.parameters())
        peer.save_pretrained(tmp_path / f"p{i}")
        loaded = model_class(peer.config).from_pretrained(tmp_path / f"p{i}").eval()
        assert type(loaded) is type(model) and sum(p.numel() for p in loaded.parameters()) == row["parameters"]
        assert torch.allclose(logits(loaded, ids), logits(peer, ids), atol=1e-5)


def _plan(fam, config, **kept) -> PrunePlan:
    units = {**fam.unit_counts(config), **kept}
    return PrunePlan(n_layer=units["layer"], head_units=units["head"], ffn=units["neuron"], hidden=units["hidden"],
                     parameters=0, target=1)


@pytest.mark.parametrize("model_type", PRUNABLE)
def test_removing_neurons_that_write_nothing_keeps_the_function(model_type):
    """Neurons whose output weights are zero contribute nothing: pruned away, the logits stay the
    teacher's. Would catch an MLP role whose neuron axis is the wrong one (in for out), or a
    gate/up/fc1 row that is not sliced with its down/fc2 column."""
    model, fam = teacher(model_type)
    units = fam.unit_counts(model.config)
    drop = [3, 17, 64, 100]
    keep = torch.tensor([j for j in range(units["neuron"]) if j not in drop])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if MLP_OUT[model_type] + ".weight" in name:
                p[:, drop] = 0.0
    layers = list(range(units["layer"]))
    kept = KeptUnits(layers=layers, head={l: torch.arange(units["head"]) for l in layers},
                     neuron={l: keep for l in layers}, hidden=torch.arange(units["hidden"]))
    pruned = prune_model(model, fam, kept, _plan(fam, model.config, neuron=len(keep)))
    assert pruned.config.to_dict()[fam.spec.ffn] == units["neuron"] - len(drop)
    ids = torch.randint(2, 96, (2, 12))
    assert torch.allclose(logits(pruned, ids), logits(model, ids), atol=1e-5)


def test_removing_a_key_value_group_that_writes_nothing_keeps_the_function():
    """Mistral (explicit head size, so the width stays): the query heads of a key/value group whose
    o_proj columns are zero contribute nothing; the group pruned away, the logits stay. Would catch
    q/k/v/o axes of the wrong width (a group's query heads are ratio × head size wide) or order."""
    model, fam = teacher("mistral")
    cfg = model.config
    d, ratio = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 0:ratio * d] = 0.0            # group 0's query heads
    units = fam.unit_counts(cfg)
    layers = list(range(units["layer"]))
    kept = KeptUnits(layers=layers, head={l: torch.tensor([1]) for l in layers},
                     neuron={l: torch.arange(units["neuron"]) for l in layers}, hidden=torch.arange(units["hidden"]))
    pruned = prune_model(model, fam, kept, _plan(fam, cfg, head=1))
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads, pruned.config.hidden_size) == \
        (ratio, 1, cfg.hidden_size)
    ids = torch.randint(2, 96, (2, 12))
    assert torch.allclose(logits(pruned, ids), logits(model, ids), atol=1e-5)


def test_gpt_neox_fused_qkv_is_sliced_per_head():
    """GPT-NeoX lays its fused projection out per head as [heads, 3, head size] (the model views it as
    ``(…, heads, 3·head_size)``): keeping heads 1 and 3 keeps those rows of q, k and v together."""
    model, fam = teacher("gpt_neox")
    H, d, h = 4, 16, 64
    hidden = torch.arange(0, h, 2)[: 2 * d]                      # hidden follows heads: 2 heads × 16
    layers = [0, 1]
    kept = KeptUnits(layers=layers, head={l: torch.tensor([1, 3]) for l in layers},
                     neuron={l: torch.arange(128) for l in layers}, hidden=hidden)
    state = sliced_state(model, fam, kept)
    w = model.gpt_neox.layers[0].attention.query_key_value.weight.detach()
    expected = w.view(H, 3 * d, h)[[1, 3]].reshape(2 * 3 * d, h)[:, hidden]
    assert torch.equal(state["gpt_neox.layers.0.attention.query_key_value.weight"], expected)
    b = model.gpt_neox.layers[0].attention.query_key_value.bias.detach()
    assert torch.equal(state["gpt_neox.layers.0.attention.query_key_value.bias"], b.view(H, 3 * d)[[1, 3]].reshape(-1))
    dense = model.gpt_neox.layers[0].attention.dense.weight.detach()
    assert torch.equal(state["gpt_neox.layers.0.attention.dense.weight"],
                       dense[hidden][:, torch.cat([torch.arange(d, 2 * d), torch.arange(3 * d, 4 * d)])])


@pytest.mark.parametrize("model_type,changes,why", [
    ("gemma", {}, "it has no table of module roles"),
    ("roberta", {}, "it has no table of module roles"),
    ("bert", {}, "it has no table of module roles"),
    ("deberta-v2", {}, "it has no table of module roles"),
    ("starcoder2", {}, "it has no table of module roles"),
    ("opt", {"word_embed_proj_dim": 32}, "'model.decoder.embed_tokens.weight' of shape (96, 32) does not fit its role"),
    ("phi", {"qk_layernorm": True}, "parameter 'model.layers.0.self_attn.q_layernorm.weight' has no known role"),
])
def test_l1_refuses_what_no_role_covers_in_one_line(model_type, changes, why):
    """A family without roles, or a parameter no role covers, stops l1 before any work, in one line
    that names the family and says that bayes works for it."""
    cfg = tiny_family_config(model_type, **changes)
    fam = family_for(get_host(), cfg)
    with pytest.raises(ValueError) as err:
        L1Initializer().check(cfg, fam, [1000])
    text = str(err.value)
    assert "\n" not in text and why in text
    assert text.startswith(f"the l1 initializer cannot prune {model_type} models (")
    assert text.endswith("the bayes initializer works for them (--init bayes)")
