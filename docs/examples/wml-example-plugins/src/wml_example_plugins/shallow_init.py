"""``shallow``: peers with the teacher's width and fewer layers, the depth nearest each target.

An initializer receives the teacher model, its family and the parameter targets (N/2, N/3, …) and
returns the peers with a table row each (``table_row``: shape, parameters, target, error). The
optional ``check`` rejects an impossible request from the teacher's config alone, before any work.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from wml_framework import hookimpl
from wml_framework.api import InitResult, table_row


class ShallowInitializer:
    def __init__(self, seed_offset: int = 0):
        self.seed_offset = seed_offset

    def check(self, teacher_config, family, targets, *, calibration=None) -> None:
        one_layer = family.count_parameters(self._config(family, teacher_config, 1))
        for i, target in enumerate(targets):
            if target < one_layer / 2:
                raise ValueError(f"shallow: peer {i}'s target {target:,} is far below a one-layer peer ({one_layer:,})")

    def build(self, teacher, family, targets, *, calibration=None, seed: int = 0) -> InitResult:
        config = teacher.config
        depths = range(1, family.shape(config)["n_layer"] + 1)
        peers, rows, trace = [], [], []
        for i, target in enumerate(targets):
            layers = min(depths, key=lambda L: abs(family.count_parameters(self._config(family, config, L)) - target))
            torch.manual_seed(seed + self.seed_offset + i)
            peer = AutoModelForCausalLM.from_config(self._config(family, config, layers))
            count = sum(p.numel() for p in peer.parameters())
            peers.append(peer)
            rows.append(table_row(i, family.shape_string(peer.config), count, target))
            trace.append({"peer": i, "layers": layers, "parameters": count})
        return InitResult(peers=peers, rows=rows, trace=trace)

    @staticmethod
    def _config(family, config, layers: int):
        s = family.shape(config)
        return family.make_config(vocab_size=config.vocab_size, n_layer=layers, n_head=s["n_head"],
                                  head_dim=s["head_dim"], ffn=s["ffn"], max_positions=family.max_positions(config),
                                  bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                  pad_token_id=getattr(config, "pad_token_id", None), base=config, hidden=s["hidden"])


def make_shallow(cfg) -> ShallowInitializer:
    """Peers of the teacher's width and fewer layers (random weights)."""
    return ShallowInitializer()


@hookimpl
def wml_register_initializers(register):
    register("shallow", make_shallow)
