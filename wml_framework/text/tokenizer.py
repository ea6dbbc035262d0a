"""Tokenizers: training a byte-level BPE, and how a text is presented to a model.

Why one module: the trainer, ``wml eval``, exported folders and the BabyLM evaluation pipeline must
agree on how a text starts. The rule: BOS, then the text with a leading space (" The dog …"), which
is what the pipeline's causal backend scores (its prefix token, then a space and the sentence), and
what GPT-2-style tokenizers expect; training documents are presented the same way, so the model is
scored on what it was trained on. BOS is the tokenizer's ``bos_token``, else its ``eos_token``.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np

__all__ = ["AS_IS_CLASSES", "train_tokenizer", "load_tokenizer", "tokenizer_fingerprint", "bos_token_id", "present",
           "encode_with_bos", "document_encoder", "word_starts", "tokenizer_adds_bos", "with_bos", "pad_token_id"]

BOS, EOS, PAD, MASK = "<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>"


def train_tokenizer(docs, vocab_size: int, mask_token: bool = False):
    """Byte-level BPE trained on ``docs`` (any iterable of texts: streamed, never held whole), wrapped
    as a PreTrainedTokenizerFast that prepends BOS to every encoding (so a sentence's first word is
    scored too, also by pipelines that rely on the tokenizer for it). ``mask_token``: with a mask
    token (``<|mask|>``, id 3) for masked and hybrid objectives; without, the ids are as they always were."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # add_prefix_space: "The" and " The" encode alike, so pipelines that present a sentence with a
    # leading space (BabyLM 2024) and without one (2025) both score what the model was trained on
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD] + ([MASK] if mask_token else []), min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator((present(d) for d in docs), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    extra = {"mask_token": MASK} if mask_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, **extra)


#: the tokenizer classes (transformers 4 and 5 names) that read a folder's ``tokenizer.json`` as it is
AS_IS_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path):
    """The tokenizer saved in folder ``path``. One that names a class of :data:`AS_IS_CLASSES` (what wml
    exports) is read exactly from its ``tokenizer.json``: transformers 5's AutoTokenizer gives some model
    types (``qwen2`` …) their own class instead, which rebuilds the pre-tokenizer, so the text would be
    split unlike the model's training."""
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(path)
    if (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file():
        named = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
        if named in AS_IS_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
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


def present(text: str) -> str:
    """A text as a model sees it after BOS: with one leading space (kept if it has one already)."""
    return text if text[:1].isspace() else " " + text


def encode_with_bos(tokenizer, texts: list[str]) -> list[list[int]]:
    """BOS, then the token ids of each presented text: exactly what the BabyLM pipeline scores."""
    ids = tokenizer([present(t) for t in texts], add_special_tokens=False)["input_ids"]
    bos = bos_token_id(tokenizer)
    return [[bos, *seq] for seq in ids]


#: every character ``str.split()`` splits on (all are below U+3001)
_SPACES = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


def word_starts(text: str, offsets) -> np.ndarray:
    """How many whitespace-separated words of ``text`` begin in each token (character ``offsets``
    ``(start, end)`` per token, as the tokenizers library gives them): summed over a document's
    tokens, exactly ``len(text.split())``. A word start is counted once, in the first token whose
    span covers it, so byte-level pieces of one character sharing a span do not count it twice."""
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    space = np.isin(chars, _SPACES)
    start = ~space
    start[1:] &= space[:-1]
    cum = np.concatenate([[0], np.cumsum(start, dtype=np.int64)])
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ends = np.maximum.accumulate(spans[:, 1])
    begin = np.maximum(spans[:, 0], np.concatenate([[0], ends[:-1]]))      # what no earlier token covered
    counts = cum[np.maximum(spans[:, 1], begin)] - cum[begin]
    return counts.clip(0, 255).astype(np.uint8)


def document_encoder(tokenizer, words: bool = False):
    """A function from a batch of documents to one flat array of token ids, BOS and EOS around each
    presented document: the fast path of corpus tokenization (one call into the tokenizers library a
    batch, BOS and EOS added there by a post-processor). ``words``: the function returns
    ``(ids, words)``, ``words[i]`` the number of whitespace-separated words that begin in token i
    (:func:`word_starts`; BabyLM budgets and checkpoints count words, not tokens)."""
    import itertools

    from tokenizers import Tokenizer, processors

    bos, eos = bos_token_id(tokenizer), tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:                     # a slow tokenizer: the plain (slower) route
        def encode_slow(docs):
            seqs = encode_with_bos(tokenizer, docs)
            tail = [] if eos is None else [eos]
            ids = np.fromiter(itertools.chain.from_iterable(s + tail for s in seqs), dtype=np.int64)
            if not words:
                return ids
            return ids, _approximate_word_starts(tokenizer, seqs, tail, docs)
        return encode_slow
    fast = Tokenizer.from_str(backend.to_str())
    bos_t = tokenizer.convert_ids_to_tokens(bos)
    pieces = [(bos_t, bos)] + ([] if eos is None else [(tokenizer.convert_ids_to_tokens(eos), eos)])
    template = f"{bos_t} $A" + ("" if eos is None else f" {pieces[1][0]}")
    fast.post_processor = processors.TemplateProcessing(single=template, special_tokens=list(dict(pieces).items()))
    batch = getattr(fast, "encode_batch_fast", fast.encode_batch)

    def encode(docs):
        encodings = batch([present(d) for d in docs], add_special_tokens=True)
        total = sum(len(e) for e in encodings)
        return np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)

    def encode_counting(docs):
        texts = [present(d) for d in docs]
        encodings = fast.encode_batch(texts, add_special_tokens=True)      # the one with offsets
        total = sum(len(e) for e in encodings)
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
        counts = [word_starts(t, e.offsets) if len(e) else np.zeros(0, np.uint8) for t, e in zip(texts, encodings)]
        return ids, np.concatenate(counts) if counts else np.zeros(0, np.uint8)
    return encode_counting if words else encode


def _approximate_word_starts(tokenizer, seqs, tail, docs) -> np.ndarray:
    """Word starts for a slow tokenizer (no offsets): each document's word count on its first
    content tokens, one a token. Totals are exact; where in a document the words fall is not."""
    out = []
    for seq, doc in zip(seqs, docs):
        counts = np.zeros(len(seq) + len(tail), np.uint8)
        n = len(doc.split())
        body = counts[1:len(seq)]
        k = min(n, len(body))
        body[:k] = 1
        if n > k and len(body):
            body[-1] = min(255, 1 + n - k)
        out.append(counts)
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


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
