"""Exported folders carry what transformers 4 (the BabyLM 2025 pipeline pins 4.51.3) needs to read them
as transformers 5 does, and transformers 5 still reads them exactly as before.

These check the written files, without transformers 4 (``benchmarks/pipeline_compat.py`` and the slow
``test_pipeline_compat.py`` run the pipeline itself under 4.51.3). What transformers 4 does with a folder,
measured: it cannot load the tokenizer class ``TokenizersBackend``; it resets a byte-level pre-tokenizer's
``add_prefix_space`` to false unless the config names it; it reads ``rope_theta``/``rope_scaling``/
``partial_rotary_factor`` (GPT-NeoX: ``rotary_emb_base``/``rotary_pct``) and ``torch_dtype``, and takes its
defaults without them; and it fails on a list of ``extra_special_tokens``.
"""

from __future__ import annotations

import json

import pytest
import torch
from eval_synthetic import synthetic_sentences, tiny_tokenizer
from test_pseudo_likelihood import masked_tokenizer

from wml_framework.api import build_model
from wml_framework.plugin_system.host import PluginHost
from wml_framework.text.tokenizer import load_tokenizer, train_tokenizer
from wml_framework.training.export import save_model
from wml_framework.training.transformers4 import (
    config_for_transformers4,
    tokenizer_config_for_transformers4,
)

#: every family wml exports, with the rotary settings set away from transformers 4's defaults
FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "phi", "gemma", "roberta", "bert", "deberta-v2"]
MASKED = {"roberta", "bert", "deberta-v2"}
THETA = 12345.0
PARTIAL = {"gpt_neox": 0.5, "phi": 0.25}     # transformers 4's defaults: 0.25 and 0.5


def _family_model(name: str, vocab_size: int):
    """A tiny model of family ``name`` as ``wml run`` makes a teacher config, rotary settings changed."""
    host = PluginHost()
    kw = dict(vocab_size=vocab_size, n_layer=1, n_head=2, head_dim=16, ffn=48, max_positions=64,
              bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if name == "mistral":                      # served by the ``standard`` family from a base config
        from transformers import MistralConfig

        base = MistralConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2)
        config = host.create("family", "standard").adopt(base).make_config(**kw, base=base)
    else:
        config = host.create("family", name).make_config(**kw)
    rope = getattr(config, "rope_parameters", None)
    if rope:
        rope["rope_theta"] = THETA
        if name in PARTIAL:
            rope["partial_rotary_factor"] = PARTIAL[name]
    torch.manual_seed(0)
    return build_model(config).eval()


def _read(folder, name: str) -> dict:
    return json.loads((folder / name).read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_names_its_rotary_settings_and_dtype_for_transformers_4(tmp_path, family):
    """Catches: a family whose exported config lacks ``rope_theta`` (transformers 4 then rotates with 10000),
    GPT-NeoX without ``rotary_emb_base``/``rotary_pct`` or Phi without ``partial_rotary_factor`` (4's defaults
    0.25 and 0.5), no ``torch_dtype``; a rewrite that changes what transformers 5 reads (its ``rope_parameters``,
    ``dtype``, the logits of the reloaded model); and ``wml eval`` splitting a family's text unlike its training
    (transformers 5's AutoTokenizer gives a qwen2 folder Qwen2Tokenizer, which rebuilds the pre-tokenizer)."""
    from transformers import AutoConfig

    from wml_framework.evaluation.models import load_model

    tok = train_tokenizer(synthetic_sentences(200, 0), 300, mask_token=family in MASKED)
    model = _family_model(family, len(tok))
    save_model(model, tok, tmp_path / "m")
    written = _read(tmp_path / "m", "config.json")
    assert written["torch_dtype"] == written["dtype"] == "float32"
    if family in ("gpt2", "opt", "roberta", "bert", "deberta-v2"):
        assert "rope_theta" not in written and "rope_scaling" not in written
    else:
        assert written["rope_parameters"]["rope_theta"] == written["rope_theta"] == THETA
        assert "rope_scaling" not in written          # a default rotary type: transformers 4 needs none
    if family == "gpt_neox":
        assert written["rotary_emb_base"] == THETA and written["rotary_pct"] == written["partial_rotary_factor"] == 0.5
    if family == "phi":
        assert written["partial_rotary_factor"] == 0.25
    reread = AutoConfig.from_pretrained(tmp_path / "m")
    assert getattr(reread, "rope_parameters", None) == getattr(model.config, "rope_parameters", None)
    assert reread.dtype == torch.float32
    ids = torch.tensor([[0, 5, 9, 33, 12, 7, 40]])
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m")(input_ids=ids).logits, model(input_ids=ids).logits)
    text = "Chad hadn't noticed 12 cats."     # a first word, a contraction, digits
    assert load_tokenizer(tmp_path / "m")(text)["input_ids"] == tok(text)["input_ids"]


def test_the_tokenizer_config_names_its_class_and_prefix_space(tmp_path):
    """Catches: ``TokenizersBackend`` left as the class (transformers 4 cannot load the folder),
    ``add_prefix_space`` not written (4 resets it to false: ``K`` instead of ``ĠK`` for a first word),
    a value written that is not the pre-tokenizer's own (false for a tokenizer without prefix space),
    and a rewrite that changes how transformers 5 encodes."""
    from transformers import AutoTokenizer

    llama = _family_model("llama", 300)
    for name, tok, space in (("bpe", tiny_tokenizer(300), True), ("roberta", masked_tokenizer(), False)):
        save_model(llama, tok, tmp_path / name)
        written = _read(tmp_path / name, "tokenizer_config.json")
        assert written["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert written["add_prefix_space"] is space
        assert _read(tmp_path / name, "tokenizer.json")["pre_tokenizer"]["add_prefix_space"] is space
        reloaded = AutoTokenizer.from_pretrained(tmp_path / name)
        for text in ("Kids like cats.", " the dog sees a bird"):
            assert reloaded(text)["input_ids"] == tok(text)["input_ids"]


def test_additional_special_tokens_are_written_under_the_name_both_versions_read(tmp_path):
    """Catches: transformers 5's list of ``extra_special_tokens`` left in the file (transformers 4 reads
    that key as a dict of named tokens and fails on a list), or the tokens dropped."""
    from transformers import AutoTokenizer

    tok = tiny_tokenizer(300)
    tok.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    save_model(_family_model("llama", len(tok)), tok, tmp_path / "m")
    written = _read(tmp_path / "m", "tokenizer_config.json")
    assert not isinstance(written.get("extra_special_tokens"), list)
    assert written["additional_special_tokens"] == ["<|sep|>"]
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert "<|sep|>" in reloaded.all_special_tokens
    assert reloaded("a <|sep|> b")["input_ids"] == tok("a <|sep|> b")["input_ids"]


def test_scaled_rotary_types_get_rope_scaling_and_nested_ones_are_left_alone():
    """Catches: a scaled rotary type (linear, yarn …) without ``rope_scaling`` (transformers 4 then rotates
    without scaling), ``rope_theta`` inside ``rope_scaling``, and per-layer-type parameters misread as one."""
    linear = config_for_transformers4({"model_type": "llama", "dtype": "bfloat16", "rope_parameters": {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}})
    assert linear["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert linear["rope_theta"] == 5e5 and linear["torch_dtype"] == "bfloat16"
    nested = {"model_type": "x", "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    assert config_for_transformers4(nested) == nested
    assert config_for_transformers4({"model_type": "gpt2"}) == {"model_type": "gpt2"}
    assert "tokenizer_class" not in tokenizer_config_for_transformers4({}, None)   # no tokenizer.json: no class


def test_init_peers_folders_are_written_for_transformers_4(tmp_path):
    """Catches: ``wml init-peers`` saving peers without the transformers 4 keys (its own save path)."""
    from helpers_models import build, tiny_llama_config

    from wml_framework.commands.init_peers_cmd import save_peers

    teacher = tmp_path / "teacher"
    tok = tiny_tokenizer(300)
    build(tiny_llama_config(vocab_size=len(tok)), seed=0).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    save_peers(tmp_path / "out", [build(tiny_llama_config(vocab_size=len(tok), hidden=16), seed=1)], teacher)
    config = _read(tmp_path / "out" / "peer_0", "config.json")
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["torch_dtype"] == config["dtype"]
    assert _read(tmp_path / "out" / "peer_0", "tokenizer_config.json")["add_prefix_space"] is True
