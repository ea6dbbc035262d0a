"""Tokenizers: training a byte-level BPE, and the BOS conventions every scorer relies on.

Why one module: the trainer, ``wml eval`` and exported folders must agree on how a text starts
(a BOS token, so its first word is scored; method.md §9), and which token pads.
"""

from __future__ import annotations

import copy
import hashlib

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def train_tokenizer(docs, vocab_size: int):
    """Byte-level BPE trained on ``docs``, wrapped as a PreTrainedTokenizerFast that
    prepends BOS to every encoding (so a sentence's first word is scored too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids (its whole serialized form)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)))
    return hashlib.sha256((text + extra).encode("utf-8")).hexdigest()[:16]


def bos_token_id(tokenizer) -> int | None:
    """The token scoring prepends: ``bos_token``, else ``eos_token`` (GPT-2 style)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_with_bos(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, starting with BOS whether or not the tokenizer adds it."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    bos = bos_token_id(tokenizer)
    return [seq if seq[:1] == [bos] else [bos, *seq] for seq in ids]


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether plain ``tokenizer(text)`` already starts with BOS, which the BabyLM pipeline's
    causal backend relies on to score a sentence's first word."""
    bos = bos_token_id(tokenizer)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def with_bos(tokenizer):
    """A copy of a fast tokenizer whose encodings start with BOS (its ``bos_token``, else its
    ``eos_token``), so that a folder saved with it scores in the BabyLM pipeline as in ``wml eval``.
    Returns the tokenizer itself when it already adds BOS."""
    from tokenizers import processors

    if tokenizer_adds_bos(tokenizer):
        return tokenizer
    token = tokenizer.bos_token or tokenizer.eos_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if token is None or backend is None:
        raise ValueError("cannot make this tokenizer add BOS: it needs a fast backend and a bos or eos token")
    out = copy.deepcopy(tokenizer)
    template = processors.TemplateProcessing(single=f"{token} $A", pair=f"{token} $A {token} $B",
                                             special_tokens=[(token, tokenizer.convert_tokens_to_ids(token))])
    existing = out.backend_tokenizer.post_processor
    out.backend_tokenizer.post_processor = template if existing is None else processors.Sequence([existing, template])
    if out.bos_token is None:
        out.bos_token = token
    return out


def pad_token_id(tokenizer) -> int:
    """Any id works for padding (masked, never a target); prefer the tokenizer's own."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0
