"""Resumable training state: written atomically, so an interrupted run resumes from the
last complete checkpoint and never from a half-written one."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .atomic import atomic_write_bytes

FILE = "state.pt"


def save(run_dir: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(run_dir) / "checkpoint" / FILE, buf.getvalue())


def exists(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoint" / FILE).is_file()


def load(run_dir: Path) -> dict:
    path = Path(run_dir) / "checkpoint" / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no checkpoint to resume from ({path} is missing)")
    return torch.load(path, map_location="cpu", weights_only=False)
