"""Where text comes from: the files a corpus setting names, the held-out text beside them, and the
documents they hold, read as a stream (a 100M-word corpus is never held in memory).

A corpus is a text file, a folder of text files (``.txt``, and BabyLM's ``.train``, ``.dev``,
``.test``), or the public-domain default shipped in the package. The held-out text is, in order:
``val_corpus`` when given; else a ``dev/`` folder beside the training folder (the BabyLM layout,
``train_10M/`` with ``dev/``); else every k-th chunk of the corpus itself (docs/data.md).

Documents are the unit BOS and EOS surround. In a file with blank lines (books) a document is a
paragraph, its line breaks turned into spaces; in a file without them (one utterance or sentence a
line, as BabyLM's files) a document is a line. With ``clean`` (the default), CHILDES speaker labels
(``*MOT:``) and Wikipedia section headers (``= = = Title = = =``) are dropped and runs of whitespace
become one space.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["TEXT_SUFFIXES", "DEV_FOLDER", "PROBE_BYTES", "BINARY_SHARE", "DOC_RULE_VERSION", "CorpusError",
           "is_none", "default_corpus_dir", "default_blimp_dir", "cache_dir", "corpus_files", "CorpusPlan",
           "plan_corpus", "check_text", "line_per_document", "clean_line", "iter_documents",
           "files_fingerprint", "total_bytes"]

TEXT_SUFFIXES = (".txt", ".train", ".dev", ".test")
DEV_FOLDER = "dev"
PROBE_BYTES = 1 << 20          # bytes of each file sampled to decide its layout and check it is text
BINARY_SHARE = 0.10            # a file more than this share undecodable or control bytes is not text
DOC_RULE_VERSION = 2           # part of the cache key: bump when the document rule changes

_SPEAKER = re.compile(r"^\*[A-Z]{2,4}:\s*")
_HEADER = re.compile(r"^\s*(=\s+)+\S.*?(\s+=)+\s*$")
_SPACES = re.compile(r"\s+")


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, no text files, empty or not text. Names the path."""


def is_none(spec) -> bool:
    """Whether a corpus or minimal-pair setting says 'nothing' ('', 'none'): what skips an evaluator."""
    return spec is None or str(spec).strip().lower() in ("", "none")


def default_corpus_dir() -> Path:
    return Path(str(resources.files("wml_framework") / "data" / "corpus"))


def default_blimp_dir() -> Path:
    return Path(str(resources.files("wml_framework") / "data" / "blimp"))


def cache_dir() -> Path:
    """Where tokenizers and token streams are cached (``WML_CACHE_DIR`` or ~/.cache/wml)."""
    return Path(os.environ.get("WML_CACHE_DIR") or Path.home() / ".cache" / "wml")


def _path_of(spec: str) -> Path:
    return default_corpus_dir() if spec in ("", "default") else Path(spec).expanduser()


def corpus_files(spec: str) -> list[Path]:
    """The text files a corpus spec names, sorted; a one-line CorpusError when there are none."""
    path = _path_of(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus folder {str(path)!r} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        return files
    raise CorpusError(f"corpus {str(path)!r} does not exist (give a text file, a folder of them, or 'default')")


@dataclass
class CorpusPlan:
    """The training files, the held-out files (empty: carve chunks out of the training text), and a
    sentence saying how the held-out split was chosen (logged, and kept in the token cache)."""

    train: list
    heldout: list = field(default_factory=list)
    heldout_from: str = ""


def plan_corpus(spec: str, val_spec: str = "") -> CorpusPlan:
    """Which files train and which are held out, with every file checked to be text (before any work)."""
    train = corpus_files(spec)
    path = _path_of(spec)
    if val_spec:
        heldout, how = corpus_files(val_spec), f"val_corpus {str(_path_of(val_spec))!r}"
    elif path.is_dir() and path.name != DEV_FOLDER and (path.parent / DEV_FOLDER).is_dir():
        heldout = corpus_files(str(path.parent / DEV_FOLDER))
        how = f"the {DEV_FOLDER}/ folder beside {path.name}/ ({len(heldout)} file(s); BabyLM layout)"
    else:
        heldout, how = [], "every k-th chunk of the corpus (val_fraction)"
    for f in [*train, *heldout]:
        check_text(f)
    if not any(f.stat().st_size for f in train):
        raise CorpusError(f"corpus {str(path)!r} is empty")
    return CorpusPlan(train, heldout, how)


def check_text(path: Path) -> None:
    """A CorpusError naming ``path`` when its first bytes are mostly undecodable or binary."""
    with open(path, "rb") as fh:
        head = fh.read(PROBE_BYTES)
    if not head:
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(head, final=False)
    bad = text.count("\ufffd") + sum(1 for ch in text if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    if bad > BINARY_SHARE * max(len(text), 1):
        raise CorpusError(f"corpus file {str(path)!r} is not text: {100 * bad / max(len(text), 1):.0f}% of its first "
                          f"{len(head):,} bytes are undecodable or control characters (expected UTF-8 text)")


def line_per_document(path: Path) -> bool:
    """Whether a file holds one item a line (no blank lines in its first MiB) rather than paragraphs."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(PROBE_BYTES)
    return not re.search(r"\n[ \t]*\n", head.strip())


def clean_line(line: str) -> Optional[str]:
    """A line without its speaker label, or None for a section header; whitespace collapsed."""
    if _HEADER.match(line):
        return None
    return _SPACES.sub(" ", _SPEAKER.sub("", line)).strip()


def iter_documents(files: list[Path], clean: bool = True) -> Iterator[str]:
    """Every document of ``files`` in order, read line by line (see the module docstring)."""
    for path in files:
        per_line = line_per_document(path)
        paragraph: list[str] = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                line = raw.rstrip("\r\n")
                if clean:
                    line = clean_line(line)
                    if line is None:
                        continue
                if per_line:
                    if line.strip():
                        yield line.strip() if clean else line
                    continue
                if line.strip():
                    paragraph.append(line.strip())
                elif paragraph:
                    yield " ".join(paragraph)
                    paragraph = []
        if paragraph:
            yield " ".join(paragraph)


def files_fingerprint(files: list[Path], *extra: object) -> str:
    """A hash of the files' names and bytes and of ``extra``: the cache key of their token streams."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def total_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)
