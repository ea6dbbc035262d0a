"""``mistral``: the Mistral architecture (``transformers.MistralForCausalLM``) as a model family.

A family tells wml how many parameters a config has (from the config alone), how to build a config
of a given shape, and how to name a shape. ``count_shapes`` (vectorised over shapes) and
``head_dim_multiple`` make it sizable by the built-in ``bayes`` initializer, so
``wml run --set teacher_family=mistral`` trains a Mistral teacher and sizes Mistral peers.
"""

from __future__ import annotations

import numpy as np
from transformers import MistralConfig

from wml_framework import hookimpl
from wml_framework.api import shape_string


class MistralFamily:
    name = "mistral"
    model_type = "mistral"        # matched against a Hugging Face config's model_type
    head_dim_multiple = 2         # rotary embeddings rotate pairs of dimensions

    def shape(self, config) -> dict:
        return dict(n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, head_dim=config.head_dim,
                    hidden=config.hidden_size, ffn=config.intermediate_size)

    def shape_string(self, config) -> str:
        return shape_string(self.shape(config))

    def default_ffn(self, hidden: int) -> int:
        return 16 * round(7 * hidden / 2 / 16)      # Mistral-7B pairs hidden 4096 with FFN 14336

    def max_positions(self, config) -> int:
        return config.max_position_embeddings

    def count_shapes(self, base, *, n_layer, n_head, head_dim, ffn, hidden=None, n_kv_head=None):
        """Exact counts for arrays of shapes; everything else (vocabulary, tying) from ``base``."""
        L, H, d, F = (np.asarray(x, dtype=np.int64) for x in (n_layer, n_head, head_dim, ffn))
        h = H * d if hidden is None else np.asarray(hidden, dtype=np.int64)
        K = H if n_kv_head is None else np.asarray(n_kv_head, dtype=np.int64)
        per_layer = h * H * d + 2 * h * K * d + H * d * h + 3 * h * F + 2 * h   # q, k, v, o, gate/up/down, norms
        heads = 1 if getattr(base, "tie_word_embeddings", False) else 2        # embeddings, and an untied head
        return heads * base.vocab_size * h + L * per_layer + h

    def count_parameters(self, config) -> int:
        s = self.shape(config)
        return int(self.count_shapes(config, n_layer=s["n_layer"], n_head=s["n_head"], head_dim=s["head_dim"],
                                     ffn=s["ffn"], hidden=s["hidden"], n_kv_head=config.num_key_value_heads))

    def make_config(self, *, vocab_size, n_layer, n_head, head_dim, ffn, max_positions, bos_token_id=None,
                    eos_token_id=None, pad_token_id=None, base=None, hidden=None, n_kv_head=None) -> MistralConfig:
        tie = bool(getattr(base, "tie_word_embeddings", False))
        return MistralConfig(vocab_size=int(vocab_size), num_hidden_layers=int(n_layer), num_attention_heads=int(n_head),
                             num_key_value_heads=int(n_kv_head or n_head), head_dim=int(head_dim),
                             hidden_size=int(hidden or int(n_head) * int(head_dim)), intermediate_size=int(ffn),
                             max_position_embeddings=int(max_positions), tie_word_embeddings=tie,
                             bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


@hookimpl
def wml_register_model_families(register):
    register("mistral", MistralFamily, help="Mistral (MistralForCausalLM): LLaMA-like blocks, untied head")
