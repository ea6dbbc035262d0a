"""The records a training loop logs (one JSON line per step, ω step and evaluation), and cutting
them back to a checkpoint when a run resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..runtime.atomic import atomic_write_text
from ..runtime.run_layout import RunLayout

__all__ = ["finite_or_none", "truncate_records", "truncate_metrics"]


def finite_or_none(values) -> list:
    """A list of floats for a JSON record, with None where a value is NaN or infinite (strict JSON)."""
    return [float(v) if math.isfinite(v) else None for v in values]


def truncate_records(path: Path, step: int) -> None:
    """Drop the records of ``path`` logged after the checkpoint a resumed loop restarts from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def truncate_metrics(run_dir: Path, step: int) -> None:
    """:func:`truncate_records` of the peers' ``metrics.jsonl``."""
    truncate_records(RunLayout(run_dir).metrics, step)
