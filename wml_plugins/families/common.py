"""What the built-in model families share: counting by shape, pruning by units, config copying.

A family tells the rest of wml three things about an architecture, without the core
knowing it by name: how many parameters a config has (analytically), how to build a
config of a given shape, and which tensor axes belong to which prunable unit (so that a
generic pruning engine can score and slice any family).
"""

from __future__ import annotations

import copy
import re
from typing import Optional

import numpy as np

from wml_framework.api import shape_string

__all__ = ["copy_config", "config_with", "FamilyBase", "as_int_array"]


def copy_config(base):
    """A deep copy of ``base`` that no longer claims to come from the base's folder."""
    cfg = copy.deepcopy(base)
    cfg._name_or_path = ""
    return cfg


def config_with(base, config_class, dims: dict):
    """``config_class(**dims)``, or a copy of ``base`` with ``dims`` set (keeping the rest of it)."""
    if base is None:
        return config_class(**dims)
    cfg = copy_config(base)
    for key, value in dims.items():
        if value is None and key.endswith("_token_id"):
            continue  # not given: the base's special tokens stay
        setattr(cfg, key, value)
    return cfg


class FamilyBase:
    """Shared behaviour; a subclass sets ``name``, ``model_type``, ``layer_prefix`` and the
    architecture-specific methods."""

    name: str = ""
    model_type: str = ""
    #: parameter-name prefix of layer i is ``layer_prefix + f"{i}."``
    layer_prefix: str = ""
    #: head sizes must be multiples of this (rotary embeddings rotate pairs: 2)
    head_dim_multiple: int = 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- counting ------------------------------------------------------------------------
    def count_parameters(self, config) -> int:
        """Exact ``sum(p.numel() for p in model.parameters())`` from the config alone."""
        s = self.shape(config)
        return int(self.count_shapes(config, n_layer=s["n_layer"], n_head=s["n_head"],
                                     head_dim=s["head_dim"], ffn=s["ffn"], hidden=s["hidden"],
                                     n_kv_head=self._kv_heads_of(config)))

    def _kv_heads_of(self, config) -> Optional[int]:
        return None

    def shape_string(self, config) -> str:
        return shape_string(self.shape(config))

    def default_ffn(self, hidden: int) -> int:
        """The FFN width this family usually pairs with a hidden size (4h for GPT-2, ≈8h/3 for LLaMA)."""
        return 4 * int(hidden)

    # -- pruning in terms of units -----------------------------------------------------------
    def unit_counts(self, config) -> dict:
        """How many prunable units ``config`` has: layers, head units per layer, FFN neurons
        per layer and hidden (residual) dimensions."""
        s = self.shape(config)
        return dict(layer=s["n_layer"], head=s["n_head"] // self.head_group(config),
                    neuron=s["ffn"], hidden=s["hidden"])

    def count_pruned(self, config, *, n_layer, head_units, ffn, hidden) -> np.ndarray:
        """Vectorised parameter count of ``config`` pruned to the given unit counts."""
        g, d = self.head_group(config), self.shape(config)["head_dim"]
        head_units = as_int_array(head_units)
        return self.count_shapes(config, n_layer=n_layer, n_head=head_units * g, head_dim=d, ffn=ffn,
                                 hidden=hidden, n_kv_head=head_units)

    def pruned_config(self, config, *, n_layer, head_units, ffn, hidden):
        """The standard config of ``config`` pruned to the given unit counts (head size kept)."""
        s, g = self.shape(config), self.head_group(config)
        return self.make_config(vocab_size=config.vocab_size, n_layer=n_layer, n_head=int(head_units) * g,
                                head_dim=s["head_dim"], ffn=ffn, max_positions=self.max_positions(config),
                                bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                pad_token_id=getattr(config, "pad_token_id", None),
                                base=config, hidden=hidden, n_kv_head=int(head_units))

    def max_positions(self, config) -> int:
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions"))

    # -- layers --------------------------------------------------------------------------
    def layer_of(self, param_name: str) -> Optional[int]:
        """The layer a parameter belongs to, or None for embeddings, final norm and head."""
        m = re.match(re.escape(self.layer_prefix) + r"(\d+)\.", param_name)
        return int(m.group(1)) if m else None

    def rename_layer(self, param_name: str, new_index: int) -> str:
        """The same parameter's name in layer ``new_index`` (after whole layers are removed)."""
        return re.sub("^" + re.escape(self.layer_prefix) + r"\d+\.",
                      f"{self.layer_prefix}{new_index}.", param_name, count=1)


def as_int_array(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)
