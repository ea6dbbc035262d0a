"""``bayes`` peers of teachers of the standard families, the encoders among them: exact counts, within
1% of the targets, the teacher's kind of model (masked LM for an encoder) and its other settings."""

from __future__ import annotations

import pytest
import torch
from test_family_counting import tiny_family_config

from wml_framework.api import build_model, model_class, peer_targets
from wml_framework.plugin_system.host import get_host
from wml_framework.training.families import family_for
from wml_plugins.init.bayes import BayesInitializer


@pytest.mark.parametrize("model_type,changes", [
    ("roberta", {}),
    ("bert", {}),
    ("deberta-v2", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 32}),
    ("gpt_neox", {}),
])
def test_bayes_sizes_peers_of_the_teachers_kind(model_type, changes, tmp_path):
    cfg = tiny_family_config(model_type, vocab_size=64, **changes)
    torch.manual_seed(0)
    teacher = build_model(cfg).eval()
    fam = family_for(get_host(), cfg)
    n = sum(p.numel() for p in teacher.parameters())
    assert fam.count_parameters(cfg) == n
    result = BayesInitializer(init_points=5, n_iter=30).build(teacher, fam, peer_targets(n, 2), seed=1)
    ids = torch.randint(3, 64, (1, 10))
    for i, (peer, row) in enumerate(zip(result.peers, result.rows)):
        assert type(peer) is type(teacher) is model_class(cfg)
        assert row["parameters"] == sum(p.numel() for p in peer.parameters())
        assert row["rel_error"] <= 0.01, row
        assert row["target"] == round(n / (i + 2))
        assert fam.max_positions(peer.config) == fam.max_positions(cfg)
        for key, value in changes.items():
            assert getattr(peer.config, key) == value
        assert peer(input_ids=ids).logits.shape == (1, 10, 64)
    if model_type in ("roberta", "bert", "deberta-v2"):
        assert "MaskedLM" in type(result.peers[0]).__name__
    if model_type == "gpt_neox":                      # head sizes stay multiples of 8 (rotary 1/4)
        assert all(peer.config.hidden_size // peer.config.num_attention_heads % 8 == 0 for peer in result.peers)
