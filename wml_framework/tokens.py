"""Token streams: a corpus tokenized once, cached as numpy memmaps, split into train and held out.

The held-out stream is split again in two halves (:func:`heldout_halves`): the first tunes ω,
the second is only evaluated. Random blocks of ``block_size`` tokens are drawn nanoGPT-style.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from .corpus import cache_dir, corpus_files, files_fingerprint, read_documents
from .tokenizer import encode_with_bos, tokenizer_fingerprint, train_tokenizer

SPLIT_CHUNK = 2048  # tokens; every k-th chunk is held out, so every book is in both splits
MIN_SPLIT_CHUNK = 64  # smaller corpora get smaller chunks, so that ~8 of them are held out


@dataclass
class TokenData:
    """Train and held-out token streams (memmaps) plus the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    vocab_size: int

    @property
    def val_omega(self) -> np.ndarray:
        """The first half of the held-out stream: the only data the outer (ω) step sees."""
        return heldout_halves(self.val)[0]

    @property
    def val_eval(self) -> np.ndarray:
        """The second half of the held-out stream: only ever evaluated, never tuned on."""
        return heldout_halves(self.val)[1]

    def batch(self, split: str, batch_size: int, block_size: int, gen: torch.Generator):
        """Random blocks of the train stream or of the ω half of the held-out stream."""
        stream = self.train if split == "train" else self.val_omega
        return random_blocks(stream, batch_size, block_size, gen, "train" if split == "train" else "held-out (ω)")


def heldout_halves(val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ω half, evaluated half) of a held-out stream: the one place the split is decided."""
    half = len(val) // 2
    return val[:half], val[half:]


def random_blocks(stream: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator, name: str = "token"):
    """Inputs ``x`` and next-token labels ``y``, both (batch, block), from random offsets."""
    if len(stream) < block_size + 1:
        raise ValueError(f"the {name} split has {len(stream)} tokens, fewer than block_size+1 = {block_size + 1}; "
                         "use a larger corpus, a larger val_fraction or a smaller block_size")
    starts = torch.randint(len(stream) - block_size, (batch_size,), generator=gen).tolist()
    rows = np.stack([np.asarray(stream[s: s + block_size + 1], dtype=np.int64) for s in starts])
    t = torch.from_numpy(rows)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def _split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    period = max(2, round(1.0 / val_fraction))
    chunk = int(np.clip(len(ids) // (period * 8), MIN_SPLIT_CHUNK, SPLIT_CHUNK))
    is_val = ((np.arange(len(ids)) // chunk) % period) == period - 1
    if not is_val.any() or is_val.all():
        raise ValueError(f"the corpus has only {len(ids)} tokens: too few for a held-out split "
                         f"(val_fraction {val_fraction}); use a larger corpus")
    return ids[~is_val], ids[is_val]


def _save_stream(path: Path, ids: np.ndarray) -> None:
    atomic_write_bytes(path, ids.tobytes())


def _load_stream(path: Path, dtype) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r")


def prepare(corpus: str, vocab_size: int, val_fraction: float, tokenizer=None,
            cache: Path | None = None, log=print) -> TokenData:
    """Tokenizer (trained unless given) and cached token streams for a corpus."""
    files = corpus_files(corpus)
    key_extra = ("given", tokenizer_fingerprint(tokenizer)) if tokenizer else ("bpe", vocab_size)
    key = files_fingerprint(files, key_extra, val_fraction, SPLIT_CHUNK)
    where = (cache or cache_dir()) / "tokens" / key
    meta_path = where / "meta.json"
    if tokenizer is None and (where / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(where / "tokenizer")
    if meta_path.exists() and tokenizer is not None:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        log(f"data: cached token streams {where}")
        return TokenData(_load_stream(where / "train.bin", dtype), _load_stream(where / "val.bin", dtype),
                         tokenizer, meta["vocab_size"])
    docs = read_documents(files)
    if tokenizer is None:
        log(f"data: training a {vocab_size}-token BPE tokenizer on {len(files)} file(s)")
        tokenizer = train_tokenizer(docs, vocab_size)
        with atomic_directory(where / "tokenizer") as tmp:   # never half a tokenizer in the cache
            tokenizer.save_pretrained(tmp)
    n_vocab = len(tokenizer)
    dtype = np.uint16 if n_vocab < 2**16 else np.uint32
    eos = tokenizer.eos_token_id
    seqs = encode_with_bos(tokenizer, docs)
    flat = [t for seq in seqs for t in ([*seq, eos] if eos is not None else seq)]
    ids = np.asarray(flat, dtype=dtype)
    train, val = _split(ids, val_fraction)
    _save_stream(where / "train.bin", train)
    _save_stream(where / "val.bin", val)
    atomic_write_json(meta_path, {"dtype": np.dtype(dtype).name, "vocab_size": n_vocab, "files": [str(f) for f in files],
                                  "train_tokens": int(len(train)), "val_tokens": int(len(val))})
    log(f"data: {len(train):,} train and {len(val):,} held-out tokens")
    return TokenData(_load_stream(where / "train.bin", dtype), _load_stream(where / "val.bin", dtype), tokenizer, n_vocab)
