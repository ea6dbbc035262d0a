"""Exported folders that transformers 4 reads as transformers 5 does.

The BabyLM 2025 evaluation pipeline pins ``transformers==4.51.3`` and ``tokenizers==0.21.1``; wml
saves with transformers 5, whose files transformers 4 misreads, silently where it does not fail:

- ``tokenizer_config.json`` names the class ``TokenizersBackend`` (transformers 5 only: 4 cannot load
  the folder); ``PreTrainedTokenizerFast`` is the class of both that takes ``tokenizer.json`` as it is;
- transformers 4 resets a byte-level pre-tokenizer's ``add_prefix_space`` to false when the config does
  not name it (a sentence's first word then loses its space: ``K`` instead of ``ĠK``);
- a list of ``extra_special_tokens`` (5's name of the additional special tokens) breaks 4, which reads
  ``additional_special_tokens`` (5 reads that name too);
- ``config.json`` keeps the rotary settings in ``rope_parameters`` and the dtype in ``dtype``; 4 reads
  ``rope_theta`` / ``rope_scaling`` / ``partial_rotary_factor`` (GPT-NeoX: ``rotary_emb_base`` /
  ``rotary_pct``) and ``torch_dtype``, and falls back to its defaults without them.

So the files get the transformers 4 keys beside the transformers 5 ones, with the same values; 5 gives
its own keys priority, so it reads the folder exactly as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.atomic import atomic_write_text

__all__ = ["FAST_TOKENIZER_CLASS", "config_for_transformers4", "tokenizer_config_for_transformers4",
           "write_for_transformers4"]

#: the tokenizer class of transformers 4 and 5 that reads ``tokenizer.json`` as it is
FAST_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
#: transformers 4 names of rotary settings that differ by model type (GPT-NeoX's before 5's rename)
V4_ROPE_NAMES = {"gpt_neox": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"}}
#: keys of ``rope_parameters`` that transformers 4 keeps outside ``rope_scaling``
OUTSIDE_SCALING = ("rope_theta", "partial_rotary_factor")


def config_for_transformers4(config: dict) -> dict:
    """``config`` (a saved ``config.json``) with the keys transformers 4 reads added: ``torch_dtype``
    from ``dtype``; ``rope_theta``, ``partial_rotary_factor`` and, for a scaled rotary type, ``rope_scaling``
    from a flat ``rope_parameters``. Per-layer-type ``rope_parameters`` (nested dicts) are left as they are."""
    out = dict(config)
    if out.get("dtype") is not None:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        return out
    aliases = V4_ROPE_NAMES.get(out.get("model_type"), {})
    for key in OUTSIDE_SCALING:
        if rope.get(key) is not None:
            out[key] = rope[key]
            if key in aliases:
                out[aliases[key]] = rope[key]
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        out["rope_scaling"] = {k: v for k, v in rope.items() if k not in OUTSIDE_SCALING}
    return out


def tokenizer_config_for_transformers4(config: dict, tokenizer_json: dict | None) -> dict:
    """``config`` (a saved ``tokenizer_config.json``) as transformers 4 needs it to encode as the saved
    ``tokenizer.json`` does (``None`` where the folder has none): the class that reads ``tokenizer.json``
    as it is, its pre-tokenizer's ``add_prefix_space`` (the one transformers 4 would otherwise reset),
    and additional special tokens under the name both versions read."""
    out = dict(config)
    if tokenizer_json is not None:
        out["tokenizer_class"] = FAST_TOKENIZER_CLASS
        space = (tokenizer_json.get("pre_tokenizer") or {}).get("add_prefix_space")
        if space is not None:
            out["add_prefix_space"] = bool(space)
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        out["additional_special_tokens"] = extra
    return out


def write_for_transformers4(folder: Path) -> None:
    """Rewrite a just-saved folder's ``config.json`` and ``tokenizer_config.json`` (those it has) so
    that transformers 4 reads them as transformers 5 does."""
    folder = Path(folder)
    _rewrite(folder / "config.json", config_for_transformers4)
    tokenizer_json = folder / "tokenizer.json"
    saved = json.loads(tokenizer_json.read_text(encoding="utf-8")) if tokenizer_json.is_file() else None
    _rewrite(folder / "tokenizer_config.json", lambda c: tokenizer_config_for_transformers4(c, saved))


def _rewrite(path: Path, change) -> None:
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        atomic_write_text(path, json.dumps(change(config), indent=2, sort_keys=True) + "\n")
