"""The LLaMA family (``transformers.LlamaForCausalLM``).

Separate q/k/v/o projections (optional biases), grouped-query attention (``num_key_value_heads``
may be smaller than ``num_attention_heads``: query head j reads key/value head j // ratio),
a gated SiLU MLP (gate, up, down), RMSNorm weights only, rotary positions (no parameters), and
an explicit ``head_dim`` so that the residual width need not equal heads × head size.
"""

from __future__ import annotations

import numpy as np
from transformers import LlamaConfig

from wml_framework.api import Axis

from .common import FamilyBase, as_int_array, config_with

__all__ = ["kv_heads_for", "LlamaFamily"]


def kv_heads_for(n_head: int, ratio: int) -> int:
    """Key/value heads for ``n_head`` query heads that keep a base's grouping ``ratio`` as well
    as divisibility allows: the divisor of ``n_head`` nearest to ``n_head / ratio``."""
    n_head = int(n_head)
    if ratio <= 1:
        return n_head
    divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
    return min(divisors, key=lambda d: (abs(d - n_head / ratio), -d))


class LlamaFamily(FamilyBase):
    """LLaMA: q/k/v/o, grouped-query attention, gated MLP, RMSNorm, rotary positions."""

    name = "llama"
    model_type = "llama"
    layer_prefix = "model.layers."
    head_dim_multiple = 2
    hidden_follows_heads = False

    # -- shape and counting -----------------------------------------------------------------
    def shape(self, config) -> dict:
        hidden, n_head = int(config.hidden_size), int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or hidden // n_head
        return dict(n_layer=int(config.num_hidden_layers), n_head=n_head, head_dim=int(head_dim),
                    hidden=hidden, ffn=int(config.intermediate_size))

    def default_ffn(self, hidden: int) -> int:
        """≈ 8h/3 rounded to a multiple of 16: the gated MLP's usual width (as in LLaMA)."""
        return 16 * round(8 * int(hidden) / 3 / 16)

    def _kv_heads_of(self, config) -> int:
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)

    def gqa_ratio(self, config) -> int:
        """Query heads per key/value head in ``config`` (1 without grouped-query attention)."""
        n_head, n_kv = int(config.num_attention_heads), self._kv_heads_of(config)
        return n_head // n_kv if n_head % n_kv == 0 else 1

    def count_shapes(self, base, *, n_layer, n_head, head_dim, ffn, hidden=None, n_kv_head=None) -> np.ndarray:
        """Vectorised exact count for shapes that take everything else from ``base``;
        ``n_kv_head`` defaults to the base's grouping ratio (see :func:`kv_heads_for`)."""
        L, H, d, F = (as_int_array(x) for x in (n_layer, n_head, head_dim, ffn))
        h = H * d if hidden is None else as_int_array(hidden)
        if n_kv_head is None:
            ratio = self.gqa_ratio(base)
            lookup = {int(n): kv_heads_for(n, ratio) for n in np.unique(H)}
            K = np.vectorize(lambda n: lookup[int(n)], otypes=[np.int64])(H) if H.ndim else as_int_array(lookup[int(H)])
        else:
            K = as_int_array(n_kv_head)
        ab = int(bool(getattr(base, "attention_bias", False)))
        mb = int(bool(getattr(base, "mlp_bias", False)))
        q, kv = H * d, K * d
        per_layer = (
            h * q + ab * q                 # q_proj
            + 2 * (h * kv + ab * kv)       # k_proj, v_proj
            + q * h + ab * h               # o_proj
            + 2 * (h * F + mb * F)         # gate_proj, up_proj
            + F * h + mb * h               # down_proj
            + 2 * h                        # input / post-attention RMSNorm
        )
        V = int(base.vocab_size)
        total = V * h + L * per_layer + h  # embed_tokens, layers, final norm
        if not getattr(base, "tie_word_embeddings", False):
            total = total + V * h          # lm_head (no bias)
        return total

    # -- building configs -----------------------------------------------------------------------
    def make_config(self, *, vocab_size, n_layer, n_head, head_dim, ffn, max_positions,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None, base=None, hidden=None,
                    n_kv_head=None) -> LlamaConfig:
        """A LLaMA config of the given shape. ``hidden`` defaults to n_head × head_dim and
        ``n_kv_head`` to n_head, or to the base's grouped-query ratio when a base is given."""
        n_head = int(n_head)
        if n_kv_head is None:
            n_kv_head = kv_heads_for(n_head, self.gqa_ratio(base)) if base is not None else n_head
        if n_head % int(n_kv_head):
            raise ValueError(f"llama: n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        dims = dict(vocab_size=int(vocab_size), num_hidden_layers=int(n_layer), num_attention_heads=n_head,
                    num_key_value_heads=int(n_kv_head), head_dim=int(head_dim),
                    hidden_size=int(hidden) if hidden is not None else n_head * int(head_dim),
                    intermediate_size=int(ffn), max_position_embeddings=int(max_positions),
                    bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        return config_with(base, LlamaConfig, dims)

    # -- pruning ---------------------------------------------------------------------------------
    def head_group(self, config) -> int:
        """Query heads per prunable head unit: a key/value head is pruned with its query heads."""
        return self.gqa_ratio(config)

    def prunable_axes(self, config) -> dict:
        """Parameter name -> one entry per tensor axis (weights are ``(out, in)``)."""
        s = self.shape(config)
        if s["n_head"] % self._kv_heads_of(config):
            raise ValueError("llama: num_attention_heads must be a multiple of num_key_value_heads")
        ratio, d = self.gqa_ratio(config), s["head_dim"]
        hid = Axis("hidden")
        ab = bool(getattr(config, "attention_bias", False))
        mb = bool(getattr(config, "mlp_bias", False))
        axes = {"model.embed_tokens.weight": (None, hid)}
        for l in range(s["n_layer"]):
            p = f"{self.layer_prefix}{l}."
            q_heads = Axis("head", l, width=ratio * d)   # a group's query heads are contiguous
            kv_heads = Axis("head", l, width=d)
            neuron = Axis("neuron", l)
            entries = {
                "self_attn.q_proj": (q_heads, hid), "self_attn.k_proj": (kv_heads, hid),
                "self_attn.v_proj": (kv_heads, hid), "self_attn.o_proj": (hid, q_heads),
                "mlp.gate_proj": (neuron, hid), "mlp.up_proj": (neuron, hid), "mlp.down_proj": (hid, neuron),
            }
            for module, (out_axis, in_axis) in entries.items():
                axes[p + module + ".weight"] = (out_axis, in_axis)
                if (ab and module.startswith("self_attn")) or (mb and module.startswith("mlp")):
                    axes[p + module + ".bias"] = (out_axis,)
            axes[p + "input_layernorm.weight"] = (hid,)
            axes[p + "post_attention_layernorm.weight"] = (hid,)
        axes["model.norm.weight"] = (hid,)
        if not getattr(config, "tie_word_embeddings", False):
            axes["lm_head.weight"] = (None, hid)
        return axes
