"""Reading a run folder back: its peers, ω, teacher, summary and records.

Copes with partial folders (a killed run): a broken JSON line is skipped, a missing file reads
as empty, and ω falls back from ``summary.json`` to the last logged record to uniform. A finished
run has two ω (``training/export.py``): the fitted one, for its exported ensemble, read by default,
and the one that trained the peers (``which="trained"``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, read_toml
from ..runtime.run_layout import RunLayout, is_model_dir, is_run_dir
from ..text.tokenizer import load_tokenizer
from .models import EnsembleLM, load_model

__all__ = ["OMEGA_CHOICES", "LoadedRun", "read_jsonl", "read_json", "run_omega", "load_run", "read_run_config"]


#: which ω a run's ensemble uses: fitted on the ω half at the end of the run, or the trained one
OMEGA_CHOICES = ("fitted", "trained")
FITTED_SOURCE = "summary.json (fitted ω)"


@dataclass
class LoadedRun:
    """A run folder's models. ``omega_source`` says where ω came from."""

    run_dir: Path
    peer_names: list[str]
    peers: list[nn.Module]
    peer_dirs: list[Path]
    omega: np.ndarray
    omega_source: str
    tokenizer: Any
    teacher: nn.Module | None = None
    teacher_dir: Path | None = None
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def omega_kind(self) -> str:
        """``fitted`` when ω is the run's fitted one, else ``trained`` (also for a fallback)."""
        return "fitted" if self.omega_source == FITTED_SOURCE else "trained"

    def ensemble(self) -> EnsembleLM:
        return EnsembleLM(self.peers, self.omega)


def read_jsonl(path: Path, on_error: Callable[[int, str], None] | None = None) -> list[dict]:
    """Records of a JSON-lines file; a broken line (say, from a killed run) is skipped."""
    records = []
    if not Path(path).is_file():
        return records
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                if on_error:
                    on_error(number, exc.msg)
                continue
            if isinstance(obj, dict):
                records.append(obj)
    return records


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        warnings.warn(f"{path}: not valid JSON ({exc.msg}); ignored", stacklevel=2)
        return {}
    return obj if isinstance(obj, dict) else {}


def run_omega(run_dir: Path, num_peers: int, which: str = "fitted") -> tuple[np.ndarray, str]:
    """ω of a run: summary.json's fitted ω (``which="fitted"``, when the run has one), else its
    trained ω, else the last ``outer`` then ``train`` record of metrics.jsonl, else uniform;
    normalised to sum 1, with where it came from."""
    if which not in OMEGA_CHOICES:
        raise ValueError(f"which ω: {which!r}; allowed: {', '.join(OMEGA_CHOICES)}")
    layout = RunLayout(run_dir)
    summary = read_json(layout.summary)
    candidates: list[tuple[Any, str]] = [(summary.get("omega"), "summary.json")]
    if which == "fitted":
        candidates.insert(0, (summary.get("fitted_omega"), FITTED_SOURCE))
    records = read_jsonl(layout.metrics)
    for kind in ("outer", "train"):
        last = [r for r in records if r.get("kind") == kind and r.get("omega") is not None]
        if last:
            candidates.append((last[-1]["omega"], f"metrics.jsonl (last {kind!r} record, step {last[-1].get('step')})"))
    for value, source in candidates:
        if value is None:
            continue
        try:
            w = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if len(w) == num_peers and np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0:
            return w / w.sum(), source
        warnings.warn(f"{run_dir}: ω from {source} ({value!r}) does not fit {num_peers} peers; ignored", stacklevel=2)
    return np.full(num_peers, 1.0 / num_peers), "uniform (no ω recorded)"


def load_run(run_dir: str | Path, device: str | torch.device | None = "cpu", *, load_teacher: bool = True,
             dtype: torch.dtype | None = torch.float32, omega: str = "fitted") -> LoadedRun:
    """Peers (``peers/peer_*``), ω (``omega``: which, :func:`run_omega`), teacher (``teacher/``, when
    present) and the shared tokenizer of a run."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not is_run_dir(run_dir):
        raise ValueError(f"{str(run_dir)!r} is not a run folder (it has no peers/ folder)")
    dirs = layout.peer_dirs()
    if not dirs:
        raise ValueError(f"{str(layout.peers)!r} holds no Hugging Face model folders")
    peers = [load_model(d, device, dtype) for d in dirs]
    weights, source = run_omega(run_dir, len(dirs), omega)
    teacher = load_model(layout.teacher, device, dtype) if load_teacher and is_model_dir(layout.teacher) else None
    return LoadedRun(run_dir=run_dir, peer_names=[d.name for d in dirs], peers=peers, peer_dirs=dirs, omega=weights,
                     omega_source=source, tokenizer=load_tokenizer(dirs[0]),
                     teacher=teacher, teacher_dir=layout.teacher if teacher is not None else None,
                     summary=read_json(layout.summary), config=read_run_config(run_dir))


def read_run_config(run_dir) -> dict:
    """The raw ``config.toml`` of a run ({} with a warning when it is unreadable)."""
    path = RunLayout(run_dir).config
    if not path.is_file():
        return {}
    try:
        return read_toml(path)
    except ConfigError as exc:
        warnings.warn(f"{exc}; ignored", stacklevel=2)
        return {}
