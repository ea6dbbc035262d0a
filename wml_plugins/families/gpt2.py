"""The GPT-2 family (``transformers.GPT2LMHeadModel``).

GPT-2 ties the attention width to the residual width (``n_embd = n_head × head_dim``), fuses
q/k/v into one ``Conv1D`` (weights stored ``(in, out)``), and has biases and LayerNorm
weight+bias everywhere. Learned position embeddings add ``n_positions × n_embd``.
"""

from __future__ import annotations

import numpy as np
from transformers import GPT2Config

from wml_framework.api import Axis

from .common import FamilyBase, as_int_array, config_with

__all__ = ["Gpt2Family"]


class Gpt2Family(FamilyBase):
    """GPT-2: fused q/k/v, learned positions, LayerNorm with bias, tied head by default."""

    name = "gpt2"
    model_type = "gpt2"
    layer_prefix = "transformer.h."
    #: the residual width must equal heads × head size, so pruning heads fixes the hidden size
    hidden_follows_heads = True

    # -- shape and counting -----------------------------------------------------------------
    def shape(self, config) -> dict:
        hidden, n_head = int(config.n_embd), int(config.n_head)
        return dict(n_layer=int(config.n_layer), n_head=n_head, head_dim=hidden // n_head,
                    hidden=hidden, ffn=int(config.n_inner or 4 * hidden))

    def count_shapes(self, base, *, n_layer, n_head, head_dim, ffn, hidden=None, n_kv_head=None) -> np.ndarray:
        """Vectorised exact count for shapes that take everything else from ``base``."""
        L, H, d, F = (as_int_array(x) for x in (n_layer, n_head, head_dim, ffn))
        h = H * d
        if hidden is not None and np.any(as_int_array(hidden) != h):
            raise ValueError("gpt2 needs hidden == n_head * head_dim")
        V, P = int(base.vocab_size), int(base.n_positions)
        per_layer = (
            2 * h                      # ln_1
            + h * 3 * h + 3 * h        # attn.c_attn (fused q, k, v)
            + h * h + h                # attn.c_proj
            + 2 * h                    # ln_2
            + h * F + F                # mlp.c_fc
            + F * h + h                # mlp.c_proj
        )
        if getattr(base, "add_cross_attention", False):
            per_layer = per_layer + (h * 2 * h + 2 * h) + (h * h + h) + (h * h + h) + 2 * h
        total = V * h + P * h + L * per_layer + 2 * h   # wte, wpe, blocks, ln_f
        if not getattr(base, "tie_word_embeddings", True):
            total = total + V * h                       # lm_head (no bias)
        return total

    # -- building configs -----------------------------------------------------------------------
    def make_config(self, *, vocab_size, n_layer, n_head, head_dim, ffn, max_positions,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None, base=None, hidden=None,
                    n_kv_head=None) -> GPT2Config:
        """A GPT-2 config of the given shape; everything else is copied from ``base`` if given."""
        n_embd = int(n_head) * int(head_dim)
        if hidden is not None and int(hidden) != n_embd:
            raise ValueError(f"gpt2: hidden ({hidden}) must equal n_head × head_dim ({n_embd})")
        if n_kv_head is not None and int(n_kv_head) != int(n_head):
            raise ValueError("gpt2 has no grouped-query attention (n_kv_head must equal n_head)")
        dims = dict(vocab_size=int(vocab_size), n_layer=int(n_layer), n_head=int(n_head), n_embd=n_embd,
                    n_inner=int(ffn), n_positions=int(max_positions),
                    bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        return config_with(base, GPT2Config, dims)

    # -- pruning ---------------------------------------------------------------------------------
    def head_group(self, config) -> int:
        """Query heads per prunable head unit (GPT-2 has no grouped-query attention)."""
        return 1

    def prunable_axes(self, config) -> dict:
        """Parameter name -> one entry per tensor axis: the Axis it belongs to, or None."""
        if getattr(config, "add_cross_attention", False):
            raise ValueError("gpt2: pruning models with cross-attention is not supported")
        s = self.shape(config)
        hid = Axis("hidden")
        axes = {"transformer.wte.weight": (None, hid), "transformer.wpe.weight": (None, hid)}
        for l in range(s["n_layer"]):
            p = f"{self.layer_prefix}{l}."
            qkv = Axis("head", l, repeat=3, width=s["head_dim"])
            heads = Axis("head", l, width=s["head_dim"])
            neuron = Axis("neuron", l)
            axes.update({
                p + "ln_1.weight": (hid,), p + "ln_1.bias": (hid,),
                p + "attn.c_attn.weight": (hid, qkv), p + "attn.c_attn.bias": (qkv,),
                p + "attn.c_proj.weight": (heads, hid), p + "attn.c_proj.bias": (hid,),
                p + "ln_2.weight": (hid,), p + "ln_2.bias": (hid,),
                p + "mlp.c_fc.weight": (hid, neuron), p + "mlp.c_fc.bias": (neuron,),
                p + "mlp.c_proj.weight": (neuron, hid), p + "mlp.c_proj.bias": (hid,),
            })
        axes.update({"transformer.ln_f.weight": (hid,), "transformer.ln_f.bias": (hid,)})
        if not getattr(config, "tie_word_embeddings", True):
            axes["lm_head.weight"] = (None, hid)
        return axes
