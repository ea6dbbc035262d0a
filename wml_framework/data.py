"""Corpus, tokenizer and token streams.

A corpus is a text file, a folder of ``.txt`` files, or the public-domain default shipped
in the package. Text becomes a Hugging Face fast tokenizer (byte-level BPE with a BOS
token that every encoding starts with) and a token stream cached on disk as a numpy
memmap, split deterministically into train and held-out parts, from which random blocks
of ``block_size`` tokens are drawn nanoGPT-style.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_bytes, atomic_write_json

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPLIT_CHUNK = 2048  # tokens; every k-th chunk is held out, so every book is in both splits
MIN_SPLIT_CHUNK = 64  # smaller corpora get smaller chunks, so that ~8 of them are held out


def default_corpus_dir() -> Path:
    return Path(str(resources.files("wml_framework") / "data" / "corpus"))


def default_blimp_dir() -> Path:
    return Path(str(resources.files("wml_framework") / "data" / "blimp"))


def cache_dir() -> Path:
    """Where tokenizers and token streams are cached (``WML_CACHE_DIR`` or ~/.cache/wml)."""
    return Path(os.environ.get("WML_CACHE_DIR") or Path.home() / ".cache" / "wml")


def corpus_files(spec: str) -> list[Path]:
    """The text files a corpus spec names, sorted; a clear error when there are none."""
    path = default_corpus_dir() if spec in ("", "default") else Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"corpus folder {str(path)!r} holds no .txt files")
        return files
    raise ValueError(f"corpus {spec!r} is neither a text file, a folder of .txt files, nor 'default'")


def read_documents(files: list[Path]) -> list[str]:
    """Paragraph-sized documents (blank-line separated): a natural unit for BOS/EOS."""
    docs: list[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        docs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    if not docs:
        raise ValueError(f"corpus {[str(f) for f in files]} contains no text")
    return docs


def _fingerprint(files: list[Path], *extra: object) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids (its whole serialized form)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)))
    return hashlib.sha256((text + extra).encode("utf-8")).hexdigest()[:16]


def train_tokenizer(docs: list[str], vocab_size: int):
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


def encode_with_bos(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, starting with BOS whether or not the tokenizer adds it."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id  # GPT-2 style: <|endoftext|> serves as both
    return [seq if seq[:1] == [bos] else [bos, *seq] for seq in ids]


@dataclass
class TokenData:
    """Train and held-out token streams (memmaps) plus the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    vocab_size: int

    def batch(self, split: str, batch_size: int, block_size: int, gen: torch.Generator):
        """Random blocks of the train or held-out stream (see :func:`random_blocks`)."""
        return random_blocks(self.train if split == "train" else self.val, batch_size, block_size, gen, split)


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
    key = _fingerprint(files, key_extra, val_fraction, SPLIT_CHUNK)
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
        tokenizer.save_pretrained(where / "tokenizer")
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
