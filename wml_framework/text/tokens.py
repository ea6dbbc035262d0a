"""Token streams: a corpus tokenized once, streamed to disk, cached as numpy memmaps.

Train and held-out streams: the held-out one comes from held-out files when the corpus has them
(``val_corpus``, or a BabyLM ``dev/`` folder), otherwise from every k-th chunk of the corpus. The
held-out stream is split again in two parts (:func:`heldout_halves`): cut into pieces of 2048 tokens,
the even pieces tune ω and the odd ones are only evaluated, so both parts sample every source of the
held-out text in proportion (first and second halves would hand ω some files and evaluation the
others). Tokenizing streams documents in batches through the tokenizers library and writes
ids as it goes, so memory stays flat however large the corpus. Random blocks of ``block_size`` tokens
are drawn nanoGPT-style.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None

from ..plugin_system.host import get_host
from ..runtime.atomic import atomic_directory, atomic_write_json
from .corpus import (
    DOC_RULE_VERSION,
    CorpusPlan,
    cache_dir,
    files_fingerprint,
    iter_documents,
    plan_corpus,
    total_bytes,
)
from .tokenizer import document_encoder, tokenizer_fingerprint, train_tokenizer

__all__ = ["SPLIT_CHUNK", "MIN_SPLIT_CHUNK", "HELDOUT_SPLIT_RULE", "heldout_piece", "BATCH_CHARS", "TokenData", "heldout_halves", "random_blocks", "random_starts", "random_rows",
           "document_batches", "encode_files", "split_stream", "prepare", "prepare_for", "needs_mask_token"]

#: part of the cache key: streams cached before words were counted are made again
WORDS_RULE_VERSION = "words-1"
SPLIT_CHUNK = 2048  # tokens; every k-th chunk is held out, so every book is in both splits
MIN_SPLIT_CHUNK = 64  # smaller corpora get smaller chunks, so that ~8 of them are held out
#: how the held-out stream is divided between ω and evaluation; a checkpoint records it, so that a
#: run resumed under another rule says that its evaluations before and after differ in text
HELDOUT_SPLIT_RULE = "alternate-pieces-1"
MIN_HELDOUT_PIECES = 8  # a short held-out stream still alternates at least this many pieces
BATCH_CHARS = 1 << 21  # characters of documents encoded a call (big enough to keep the library busy)


@dataclass
class TokenData:
    """Train and held-out token streams (memmaps) plus the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    vocab_size: int
    heldout_from: str = ""
    #: per train token, how many whitespace-separated words begin in it (None: not counted)
    train_words: Optional[np.ndarray] = None

    @property
    def corpus_words(self) -> Optional[int]:
        """Whitespace-separated words of the training text (one epoch), or None when not counted."""
        if self.train_words is None:
            return None
        if not hasattr(self, "_corpus_words"):
            self._corpus_words = int(np.sum(self.train_words, dtype=np.int64))
        return self._corpus_words

    @property
    def val_omega(self) -> np.ndarray:
        """The even pieces of the held-out stream: the only data the outer (ω) step sees."""
        return self._halves()[0]

    @property
    def val_eval(self) -> np.ndarray:
        """The odd pieces of the held-out stream: only ever evaluated, never tuned on."""
        return self._halves()[1]

    def _halves(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`heldout_halves` of ``val``, made once (both parts are in-memory copies)."""
        if getattr(self, "_held_parts", None) is None or self._held_parts[0] is not self.val:
            self._held_parts = (self.val, heldout_halves(self.val))
        return self._held_parts[1]

    def blocks(self, split: str, batch_size: int, block_size: int, gen: torch.Generator) -> torch.Tensor:
        """Random blocks of ``block_size + 1`` tokens, (batch, block+1), of the train stream or of the
        ω half of the held-out stream: what an objective makes inputs and labels of."""
        stream = self.train if split == "train" else self.val_omega
        return random_rows(stream, batch_size, block_size, gen, "train" if split == "train" else "held-out (ω)")

    def train_blocks(self, batch_size: int, block_size: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        """:meth:`blocks` of the train stream (the same draws) and the words they train on: those that
        begin in a block's first ``block_size`` tokens, the inputs (0 when words are not counted)."""
        starts = random_starts(self.train, batch_size, block_size, gen, "train")
        rows = torch.from_numpy(np.stack([np.asarray(self.train[s: s + block_size + 1], dtype=np.int64)
                                          for s in starts]))
        if self.train_words is None:
            return rows, 0
        return rows, int(sum(int(np.sum(self.train_words[s: s + block_size], dtype=np.int64)) for s in starts))

    def batch(self, split: str, batch_size: int, block_size: int, gen: torch.Generator):
        """Next-token inputs and labels of :meth:`blocks` (the causal shift)."""
        t = self.blocks(split, batch_size, block_size, gen)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def heldout_piece(n_tokens: int) -> int:
    """Tokens per piece of a held-out stream of ``n_tokens``: :data:`SPLIT_CHUNK` (the chunk the corpus
    split holds out, so pieces fall on its joins), fewer when the stream is short, so that it still
    has :data:`MIN_HELDOUT_PIECES` pieces to alternate."""
    return max(1, min(SPLIT_CHUNK, n_tokens // MIN_HELDOUT_PIECES))


def heldout_halves(val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ω part, evaluated part) of a held-out stream: the one place the split is decided.

    The stream is cut into pieces of :func:`heldout_piece` tokens; pieces 0, 2, 4 … make the ω part
    and 1, 3, 5 … the evaluated part, each in stream order. Both parts therefore sample every file
    of the held-out text in proportion (to within a piece), and each gets half of it (to within a
    piece). The parts are copies in memory (2 bytes a token: 20 MB for a 10M-token held-out
    stream); a block drawn from one may straddle two pieces, text from two places, as blocks of the
    corpus split's held-out chunks always could."""
    n = len(val)
    piece = heldout_piece(n)
    whole = n // piece
    body = np.asarray(val[:whole * piece]).reshape(whole, piece)
    tail = np.asarray(val[whole * piece:])
    parts = [body[0::2].reshape(-1), body[1::2].reshape(-1)]
    parts[whole % 2] = np.concatenate([parts[whole % 2], tail])   # the last, partial piece: the next in turn
    return parts[0], parts[1]


def random_blocks(stream: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator, name: str = "token"):
    """Inputs ``x`` and next-token labels ``y``, both (batch, block), from random offsets."""
    t = random_rows(stream, batch_size, block_size, gen, name)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def random_starts(stream: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator,
                  name: str = "token") -> list[int]:
    """Random offsets of ``batch_size`` blocks of ``block_size + 1`` tokens in ``stream``."""
    if len(stream) < block_size + 1:
        raise ValueError(f"the {name} split has {len(stream)} tokens, fewer than block_size+1 = {block_size + 1}; "
                         "use a larger corpus, a larger val_fraction or a smaller block_size")
    return torch.randint(len(stream) - block_size, (batch_size,), generator=gen).tolist()


def random_rows(stream: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator, name: str = "token"):
    """(batch, block+1) token ids from random offsets of ``stream`` (nanoGPT-style)."""
    starts = random_starts(stream, batch_size, block_size, gen, name)
    rows = np.stack([np.asarray(stream[s: s + block_size + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)


def document_batches(docs: Iterable[str], chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    """Documents in groups of about ``chars`` characters: what one call of the tokenizer encodes
    (big enough to keep the tokenizers library busy, small enough to keep memory flat). Public so
    that a benchmark can time the tokenizer on exactly the batches :func:`encode_files` gives it."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _progress(total: int, desc: str, enabled: Optional[bool]):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=disable, leave=False)


def encode_files(files: list[Path], encode: Callable, dtype, path: Path, *, clean: bool = True,
                 progress: Optional[bool] = None, desc: str = "tokenizing", words_path: Optional[Path] = None) -> int:
    """Every document of ``files`` through ``encode``, appended to ``path`` as it goes (written to a
    temporary file, renamed when whole). Returns the number of tokens. ``words_path``: ``encode``
    returns ``(ids, words)`` (:func:`~.tokenizer.document_encoder` with ``words=True``) and the
    per-token word starts go there, one byte a token, beside the ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    finals = [path] + ([words_path] if words_path else [])
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in finals]
    n = 0
    try:
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(open(t, "wb")) for t in tmps]
            bar = stack.enter_context(_progress(total_bytes(files), desc, progress))
            for batch in document_batches(iter_documents(files, clean)):
                ids, words = encode(batch) if words_path else (encode(batch), None)
                outs[0].write(ids.astype(dtype).tobytes())
                if words is not None:
                    outs[1].write(words.astype(np.uint8).tobytes())
                n += len(ids)
                bar.update(sum(len(d) for d in batch))
            for out in outs:
                out.flush()
                os.fsync(out.fileno())
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    return n


def split_stream(src: Path, dtype, val_fraction: float, train_path: Path, val_path: Path, *,
                 words: Optional[tuple[Path, Path]] = None) -> tuple[int, int]:
    """Every k-th chunk of ``src`` to ``val_path``, the rest to ``train_path``, chunk by chunk (flat memory).
    ``words``: (the word starts of ``src``, where the train part's go), split along the same chunks."""
    ids = np.memmap(src, dtype=dtype, mode="r")
    period = max(2, round(1.0 / val_fraction))
    chunk = int(np.clip(len(ids) // (period * 8), MIN_SPLIT_CHUNK, SPLIT_CHUNK))
    n_chunks = -(-len(ids) // chunk)
    if n_chunks < period:
        raise ValueError(f"the corpus has only {len(ids)} tokens: too few for a held-out split "
                         f"(val_fraction {val_fraction}); use a larger corpus")
    starts = np.memmap(words[0], dtype=np.uint8, mode="r") if words else None
    counts = [0, 0]
    finals = [train_path, val_path] + ([words[1]] if words else [])
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in finals]
    try:
        with contextlib.ExitStack() as stack:
            tr, va, *wo = [stack.enter_context(open(t, "wb")) for t in tmps]
            for k in range(n_chunks):
                piece = ids[k * chunk:(k + 1) * chunk]
                held = k % period == period - 1
                (va if held else tr).write(np.ascontiguousarray(piece).tobytes())
                if wo and not held:
                    wo[0].write(np.ascontiguousarray(starts[k * chunk:(k + 1) * chunk]).tobytes())
                counts[held] += len(piece)
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    return counts[0], counts[1]


def _load_stream(path: Path, dtype) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r")


def prepare(corpus: str, vocab_size: int, val_fraction: float, tokenizer=None, cache: Path | None = None,
            log=print, *, val_corpus: str = "", clean: bool = True, progress: Optional[bool] = None,
            plan: Optional[CorpusPlan] = None, mask_token: bool = False) -> TokenData:
    """Tokenizer (trained unless given) and cached token streams for a corpus (module docstring).

    ``plan``: the :func:`~.corpus.plan_corpus` of ``corpus`` and ``val_corpus`` when the caller made
    it already (a run plans its corpus before any work), so every file is listed and checked once.
    ``mask_token``: a trained tokenizer gets one (masked and hybrid objectives); a given tokenizer is
    used as it is."""
    plan = plan or plan_corpus(corpus, val_corpus)
    key_extra = (("given", tokenizer_fingerprint(tokenizer)) if tokenizer else ("bpe", vocab_size) + (("mask",) if mask_token else ()))
    key_extra += (WORDS_RULE_VERSION,)
    split = ("files", len(plan.train)) if plan.heldout else ("chunks", val_fraction, SPLIT_CHUNK)
    key = files_fingerprint(plan.train + plan.heldout, key_extra, split, clean, DOC_RULE_VERSION)
    where = (cache or cache_dir()) / "tokens" / key
    where.mkdir(parents=True, exist_ok=True)
    with _entry_lock(where):      # members started together: one builds the entry, the others then read it
        return _prepare_entry(plan, where, tokenizer, vocab_size, val_fraction, clean, progress, mask_token, log)


@contextlib.contextmanager
def _entry_lock(where: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the cache entry while it is read or built (released by the system
    if the process dies): processes preparing the same corpus at once never write the same files."""
    if fcntl is None:  # pragma: no cover - not on Windows
        yield
        return
    with open(where / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _prepare_entry(plan: CorpusPlan, where: Path, tokenizer, vocab_size: int, val_fraction: float, clean: bool,
                   progress: Optional[bool], mask_token: bool, log) -> TokenData:
    """The cache entry ``where``: read when it is built, built (tokenizer, streams, meta.json) otherwise."""
    meta_path = where / "meta.json"
    if tokenizer is None and (where / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(where / "tokenizer")
    if meta_path.exists() and tokenizer is not None:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        log(f"data: cached token streams {where}; held-out text: {meta.get('heldout_from', '?')}")
        return TokenData(_load_stream(where / "train.bin", dtype), _load_stream(where / "val.bin", dtype),
                         tokenizer, meta["vocab_size"], meta.get("heldout_from", ""),
                         _load_stream(where / "train_words.bin", np.uint8))
    if tokenizer is None:
        log(f"data: training a {vocab_size}-token BPE tokenizer on {len(plan.train)} file(s)")
        tokenizer = train_tokenizer(iter_documents(plan.train, clean), vocab_size, mask_token=mask_token)
        with atomic_directory(where / "tokenizer") as tmp:   # never half a tokenizer in the cache
            tokenizer.save_pretrained(tmp)
    n_vocab = len(tokenizer)
    dtype = np.uint16 if n_vocab < 2**16 else np.uint32
    encode, counting = document_encoder(tokenizer), document_encoder(tokenizer, words=True)
    if plan.heldout:
        n_train = encode_files(plan.train, counting, dtype, where / "train.bin", clean=clean, progress=progress,
                               words_path=where / "train_words.bin")
        n_val = encode_files(plan.heldout, encode, dtype, where / "val.bin", clean=clean, progress=progress,
                             desc="tokenizing held-out")
    else:
        whole, whole_words = where / "all.bin", where / "all_words.bin"
        encode_files(plan.train, counting, dtype, whole, clean=clean, progress=progress, words_path=whole_words)
        n_train, n_val = split_stream(whole, dtype, val_fraction, where / "train.bin", where / "val.bin",
                                      words=(whole_words, where / "train_words.bin"))
        whole.unlink()
        whole_words.unlink()
    train_words = _load_stream(where / "train_words.bin", np.uint8)
    atomic_write_json(meta_path, {"dtype": np.dtype(dtype).name, "vocab_size": n_vocab,
                                  "files": [str(f) for f in plan.train], "heldout_files": [str(f) for f in plan.heldout],
                                  "heldout_from": plan.heldout_from, "clean": clean,
                                  "train_tokens": int(n_train), "val_tokens": int(n_val),
                                  "train_words": int(np.sum(train_words, dtype=np.int64))})
    log(f"data: {n_train:,} train and {n_val:,} held-out tokens; held-out text: {plan.heldout_from}")
    return TokenData(_load_stream(where / "train.bin", dtype), _load_stream(where / "val.bin", dtype), tokenizer,
                     n_vocab, plan.heldout_from, train_words)


def prepare_for(cfg, tokenizer=None, log=print, progress: Optional[bool] = None,
                plan: Optional[CorpusPlan] = None, mask_token: Optional[bool] = None) -> TokenData:
    """:func:`prepare` with every data setting of a configuration (``corpus``, ``val_corpus``,
    ``vocab_size``, ``val_fraction``, ``clean_text``, and whether its ``objective`` needs a mask
    token): the streams a run of ``cfg`` trains and is evaluated on. Evaluators use this to score
    exactly the run's held-out text. ``plan``: the configuration's corpus plan, if made already;
    ``mask_token``: whether a trained tokenizer gets one (default: as the objective, by the
    command line's plugin host, says)."""
    if mask_token is None:
        mask_token = tokenizer is None and needs_mask_token(cfg)
    return prepare(cfg.corpus, cfg.vocab_size, cfg.val_fraction, tokenizer=tokenizer, log=log,
                   val_corpus=cfg.val_corpus, clean=cfg.clean_text, progress=progress, plan=plan,
                   mask_token=bool(mask_token))


def needs_mask_token(cfg) -> bool:
    """Whether the objective of ``cfg`` writes a mask token (then a trained tokenizer gets one)."""
    host = get_host()
    name = getattr(cfg, "objective", "causal")
    if name not in host.names("objective"):
        return False              # the run itself refuses an unknown objective, with its reasons
    return bool(host.create("objective", name, cfg, options=cfg.plugin_options(name)).needs_mask_token)
