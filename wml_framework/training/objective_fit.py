"""Whether a model can be trained with an objective, asked before any work: the head it needs
(a causal-LM or a masked-LM class), a mask token when it masks, and every attention it asks for.

Why probe attention rather than trust a list: whether a Hugging Face model obeys an attention
mask other than its own (a causal mask on RoBERTa, a bidirectional one on LLaMA) depends on the
model's code and its attention implementation. A two-token forward tells for sure, in
milliseconds: under a causal mask, changing the last token must leave the earlier logits as they
were; under a bidirectional one, it must change the first position's logits.
"""

from __future__ import annotations

import torch

from ..api import (
    BIDIRECTIONAL,
    CAUSAL,
    attending,
    build_model,
    model_class,
    native_attention,
    peer_logits,
)
from ..evaluation.pseudo_likelihood import scoring_kind

__all__ = ["ObjectiveMismatch", "head_of", "default_family", "check_head", "check_mask_token", "attends",
           "check_attentions", "check_teacher_predicts", "probe_config", "probe_model", "DEFAULT_FAMILIES"]

#: the family a teacher trained from scratch has under ``teacher_family = "auto"``, by head
DEFAULT_FAMILIES = {"causal": "llama", "masked": "roberta"}
ADVERBS = {CAUSAL: "causally", BIDIRECTIONAL: "bidirectionally"}


class ObjectiveMismatch(ValueError):
    """The objective cannot train this model (wrong head, no mask token, an attention it ignores)."""


def head_of(config) -> str:
    """``"masked"`` when models of ``config`` are masked LMs, else ``"causal"``."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING

    return "masked" if model_class(config) in set(MODEL_FOR_MASKED_LM_MAPPING.values()) else "causal"


def default_family(cfg, objective) -> str:
    """The teacher family of ``cfg``: its ``teacher_family``, or for ``auto`` the usual family of the
    objective's head (llama for causal, roberta for masked)."""
    return DEFAULT_FAMILIES[objective.head] if cfg.teacher_family == "auto" else cfg.teacher_family


def check_head(name: str, objective, config, who: str) -> None:
    """One line when the objective trains another kind of head than ``config`` builds."""
    head = head_of(config)
    if head == objective.head:
        return
    kind = {"causal": "a causal LM", "masked": "a masked LM"}
    cls = model_class(config).__name__
    if objective.head == "masked":
        fix = ("use --objective causal, or a masked-LM teacher (RoBERTa, BERT, DeBERTa-v2; "
               "with no --teacher, teacher_family auto trains a RoBERTa)")
    else:
        fix = "use --objective masked (or hybrid), or a causal-LM teacher (GPT-2, LLaMA, Qwen2, …)"
    raise ObjectiveMismatch(f"objective {name!r} trains {kind[objective.head]}, but {who} is {kind[head]} "
                            f"({cls}); {fix}")


def check_mask_token(name: str, objective, tokenizer, who: str) -> None:
    """One line when the objective masks and the tokenizer has no mask token."""
    if objective.needs_mask_token and getattr(tokenizer, "mask_token_id", None) is None:
        raise ObjectiveMismatch(f"objective {name!r} needs a mask token, and {who} has none; give a tokenizer "
                                "with one (RoBERTa's <mask>, BERT's [MASK]), or use --objective causal")


def attends(model, attention: str) -> bool:
    """Whether ``model`` attends as ``attention`` says when :func:`~wml_framework.api.attending` asks it."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab < 8:
        return True                   # nothing to probe with; the run will tell
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(4, vocab, (1, 5), generator=gen).to(device)
    y = x.clone()
    y[0, -1] = 4 + (int(x[0, -1]) - 4 + 1) % (vocab - 4)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), attending([model], attention):
            a, b = peer_logits(model, x).double(), peer_logits(model, y).double()
    except Exception:  # noqa: BLE001 - a model that fails under the mask cannot attend so
        return False
    finally:
        model.train(was)
    scale = float(a.abs().max()) or 1.0
    if attention == CAUSAL:
        return bool((a[:, :-1] - b[:, :-1]).abs().max() <= 1e-5 * scale)
    return bool((a[:, 0] - b[:, 0]).abs().max() > 1e-7 * scale)


def check_attentions(name: str, objective, model, who: str) -> None:
    """One line when the model ignores an attention the objective asks for."""
    for attention in objective.attentions:
        if attention != native_attention(model) and not attends(model, attention):
            kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            other = ("RoBERTa and BERT take both" if objective.head == "masked" else "LLaMA-like models take both")
            how = " and ".join(ADVERBS[a] for a in objective.attentions)
            raise ObjectiveMismatch(
                f"objective {name!r} needs models that attend {how}, but {who} ({kind}, {type(model).__name__}) "
                f"ignores a {attention} attention mask; {other}, or choose an objective that uses "
                f"{native_attention(model)} attention only")


#: what a model trained with each scoring predicts at a position, for the refusal's words
PREDICTS = {"causal": "the next token", "mlm": "the masked token at its own position",
            "mntp": "the next token, masked or not"}


def check_teacher_predicts(name: str, objective, teacher, who: str) -> None:
    """One line when the teacher predicts other positions than the objective's labels ask for.

    Why: a teacher-using loss compares the teacher's logits with the peers' position by position;
    a RoBERTa-style teacher (its own token under a mask) in a hybrid run (the next token, MNTP), or
    the other way round, would distil every prediction one position off, silently. What a teacher
    predicts is the scoring its config declares (every wml export stamps it), else what its head
    implies (a masked LM predicts its own position, a causal LM the next one)."""
    have = scoring_kind(teacher)
    if have == objective.scoring:
        return
    trained = getattr(teacher.config, "wml_objective", None)
    how = f"was trained with objective {trained!r}" if trained else "is a model from elsewhere"
    raise ObjectiveMismatch(
        f"{who} {how} and predicts {PREDICTS.get(have, have)} ({have}), but objective {name!r} "
        f"asks for {PREDICTS.get(objective.scoring, objective.scoring)} ({objective.scoring}): its logits "
        f"would be distilled at the wrong positions; give a teacher trained with objective {name!r}, "
        f"use the objective the teacher was trained with, or a loss that reads no teacher")


def probe_config(family, vocab_size: int = 64):
    """A tiny model config of ``family`` (one layer, two heads), to probe what its models can do
    before a teacher of it is trained."""
    d = max(8, 2 * int(getattr(family, "head_dim_multiple", 1) or 1))
    return family.make_config(vocab_size=vocab_size, n_layer=1, n_head=2, head_dim=d, ffn=4 * d, max_positions=16,
                              bos_token_id=0, eos_token_id=1, pad_token_id=2)


def probe_model(config):
    """A seeded, float32 model of ``config`` on the CPU, for :func:`attends`."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(config).float().eval()
