"""Where text comes from: the corpus files a spec names, and the documents they hold.

A corpus is a text file, a folder of text files, or the public-domain default shipped in the
package. Documents are the unit that BOS/EOS surround.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path


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


def files_fingerprint(files: list[Path], *extra: object) -> str:
    """A hash of the files' names and bytes and of ``extra``: the cache key of their token streams."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]
