"""Built-in model families: GPT-2 and LLaMA, registered like any third-party family.

Each family object answers ``name``, ``model_type`` (matched against ``config.model_type``),
``count_parameters(config)``, ``make_config(...)``, ``shape(config)`` and the pruning
description (``prunable_axes``, ``head_group``, ``pruned_config`` …); see families.common.
"""

from wml_framework import hookimpl

from .gpt2 import Gpt2Family
from .llama import LlamaFamily

__all__ = ["wml_register_model_families"]


@hookimpl
def wml_register_model_families(register):
    register("gpt2", Gpt2Family, help="GPT-2 (GPT2LMHeadModel): fused q/k/v, learned positions, tied head")
    register("llama", LlamaFamily, help="LLaMA (LlamaForCausalLM): grouped-query attention, gated MLP, RMSNorm")
