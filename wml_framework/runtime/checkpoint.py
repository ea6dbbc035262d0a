"""Resumable training state: written atomically with a checksum, loaded without executing pickle,
and kept two deep, so that a run killed at any moment (even inside a checkpoint write) resumes from
the newest checkpoint that is whole.

A checkpoint is two files in ``RUN_DIR/checkpoint/``: ``<kind>-<step>.pt`` (``torch.save`` of plain
values and tensors, read back with ``torch.load(weights_only=True)``) and ``<kind>-<step>.json``
(its step, size and SHA-256), written after it. A checkpoint without its manifest, or whose bytes do
not match it, is corrupt: it is skipped with a warning, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .atomic import atomic_write_bytes, atomic_write_json
from .run_layout import RunLayout

__all__ = ["FORMAT", "KEEP", "PEERS", "TEACHER", "CheckpointError", "Found", "KILL_ENV", "save", "found", "exists", "problem",
           "load", "remove"]

FORMAT = 1
KEEP = 2  # checkpoints of each kind kept on disk: the newest and the one before it
PEERS, TEACHER = "step", "teacher"   # the kinds: the peers' training loop's, the teacher's
_NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<step>\d{8})\.pt$")


class CheckpointError(ValueError):
    """No checkpoint of a run can be used; the message lists what was found and why it is unusable."""


@dataclass(frozen=True)
class Found:
    kind: str
    step: int
    path: Path

    @property
    def manifest(self) -> Path:
        return self.path.with_suffix(".json")


def _dir(run_dir) -> Path:
    return RunLayout(run_dir).checkpoint


def _path(run_dir, kind: str, step: int) -> Path:
    return _dir(run_dir) / f"{kind}-{step:08d}.pt"


#: a testing hook: ``KIND-STEP:data`` kills the process halfway through writing that checkpoint's
#: bytes, ``KIND-STEP:manifest`` after its bytes are in place but before its manifest
KILL_ENV = "WML_TEST_KILL_IN_CHECKPOINT"


def _kill_if_asked(kind: str, step: int, where: str) -> bool:
    if os.environ.get(KILL_ENV) == f"{kind}-{step}:{where}":
        os.kill(os.getpid(), signal.SIGKILL)
    return False


def save(run_dir, state: dict, *, kind: str = PEERS, step: Optional[int] = None) -> Path:
    """Write ``state`` (``state["step"]`` unless ``step`` is given) atomically, then its manifest,
    then drop all but the newest KEEP checkpoints of this kind."""
    step = int(state["step"] if step is None else step)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = _path(run_dir, kind, step)
    if os.environ.get(KILL_ENV) == f"{kind}-{step}:data":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
        _kill_if_asked(kind, step, "data")
    atomic_write_bytes(path, data)
    _kill_if_asked(kind, step, "manifest")
    atomic_write_json(path.with_suffix(".json"), {"format": FORMAT, "kind": kind, "step": step, "bytes": len(data),
                                                 "sha256": hashlib.sha256(data).hexdigest()})
    for old in found(run_dir, kind)[KEEP:]:
        old.path.unlink(missing_ok=True)
        old.manifest.unlink(missing_ok=True)
    return path


def found(run_dir, kind: str = PEERS) -> list[Found]:
    """Every checkpoint file of ``kind``, newest first (whole or not)."""
    folder = _dir(run_dir)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and m["kind"] == kind:
            out.append(Found(kind, int(m["step"]), p))
    return sorted(out, key=lambda f: f.step, reverse=True)


def exists(run_dir, kind: str = PEERS) -> bool:
    return bool(found(run_dir, kind))


def problem(f: Found) -> Optional[str]:
    """Why a checkpoint file cannot be trusted, or None when it is whole."""
    try:
        meta = json.loads(f.manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest (the write was interrupted)"
    except (OSError, ValueError):
        return "unreadable manifest"
    if meta.get("format") != FORMAT:
        return f"format {meta.get('format')!r}, this version reads {FORMAT}"
    data = f.path.read_bytes()
    if len(data) != meta.get("bytes"):
        return f"truncated ({len(data)} of {meta.get('bytes')} bytes)"
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return "checksum mismatch"
    return None


def load(run_dir, kind: str = PEERS, warn: Callable[[str], None] = print) -> dict:
    """The newest whole checkpoint of ``kind``; each newer corrupt one is reported through ``warn``.

    Loaded with ``weights_only=True``: tensors and plain values, no code executed."""
    candidates = found(run_dir, kind)
    if not candidates:
        raise CheckpointError(f"{str(run_dir)!r} has no {kind} checkpoint to resume from")
    bad = []
    for f in candidates:
        why = problem(f)
        if why is None:
            try:
                state = torch.load(f.path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any failure means: not usable
                why = f"cannot be read ({type(exc).__name__}: {exc})"
            else:
                for name, reason in bad:
                    warn(f"warning: checkpoint {name} is unusable ({reason}); resuming from {f.path.name}")
                return state
        bad.append((f.path.name, why))
    listing = "; ".join(f"{name}: {why}" for name, why in bad)
    raise CheckpointError(f"no usable {kind} checkpoint in {str(_dir(run_dir))!r} ({listing})")


def remove(run_dir, kind: str) -> None:
    """Drop every checkpoint of ``kind`` (the teacher's, once the teacher is saved)."""
    for f in found(run_dir, kind):
        f.path.unlink(missing_ok=True)
        f.manifest.unlink(missing_ok=True)
