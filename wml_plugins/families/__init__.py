"""Built-in model families, registered like any third-party family: GPT-2 and LLaMA (closed-form
counts), the named standard families of :mod:`.standard` (Qwen2, GPT-NeoX, OPT, Phi, Gemma, RoBERTa,
BERT, DeBERTa-v2: counts from meta builds) and ``standard``, which adopts any other model type with
the standard config fields (Mistral among them). ``docs/families.md`` says which initializer works
for which.

Each family object answers ``name``, ``model_type`` (matched against ``config.model_type``),
``count_parameters(config)``, ``make_config(...)``, ``shape(config)`` and the pruning
description (``prunable_axes``, ``head_group``, ``pruned_config`` …); see families.common.
"""

import functools

from wml_framework import hookimpl

from .gpt2 import Gpt2Family
from .llama import LlamaFamily
from .standard import REGISTERED, SPECS, GenericFamily, StandardFamily

__all__ = ["wml_register_model_families"]


@hookimpl
def wml_register_model_families(register):
    register("gpt2", Gpt2Family, help="GPT-2 (GPT2LMHeadModel): fused q/k/v, learned positions, tied head")
    register("llama", LlamaFamily, help="LLaMA (LlamaForCausalLM): grouped-query attention, gated MLP, RMSNorm")
    for model_type in REGISTERED:
        spec = SPECS[model_type]
        register(spec.name, functools.partial(StandardFamily, spec), help=spec.help)
    register("standard", GenericFamily, help="any other model type with the standard config fields and a causal-LM "
             "or masked-LM class (Mistral …): adopted from the teacher's config; sized by bayes")
