"""One trial of ``wml tune``: an ordinary run folder trained with the values its ``trial.json`` names.

``trial.json`` is written before the run starts, so a stopped tuning resumes the same trial with the
same values. A trial trains and exports (``summary.json``) and stops there: its objective, the
fitted ensemble's loss on the ω half of the held-out split, needs no minimal-pair or perplexity
evaluation (``wml eval`` can still score the folder later). :func:`run_trial` takes plain
arguments, so a launcher can run it in another process.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ... import config as cfgmod
from ...plugin_system.host import PluginError, PluginHost
from ...runner import RunError, WMLTrainer
from ...runtime.atomic import atomic_write_json
from ...runtime.run_layout import RunLayout
from ...training.loop import TrainingError
from ..execute import member_host

__all__ = ["TRIAL_FILE", "OBJECTIVE", "Trial", "write_trial", "read_trial", "run_trial"]

TRIAL_FILE = "trial.json"
#: summary.json's key the search minimises, and the trained-ω ensemble's loss recorded beside it
OBJECTIVE = "fitted_ensemble_omega_half_loss"
TRAINED_OMEGA = "ensemble_omega_half_loss"


@dataclass
class Trial:
    """A trial folder read back. ``status``: 'done', 'failed' or 'pending' (written, not finished)."""

    index: int
    run_dir: Path
    values: dict
    origin: str
    status: str
    objective: Optional[float] = None
    trained_omega_loss: Optional[float] = None
    wall_s: float = 0.0
    failure: Optional[str] = None

    @property
    def name(self) -> str:
        return self.run_dir.name


def write_trial(run_dir: Path, index: int, values: dict, origin: str, settings: dict, seed: int) -> None:
    """The values, before any training: what the run will use whenever it (re)starts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / TRIAL_FILE, {"trial": index, "values": values, "origin": origin,
                                             "settings": settings, "seed": seed,
                                             "wall_s": 0.0, "sessions": 0, "failed": None})


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finite(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def read_trial(run_dir: Path) -> Optional[Trial]:
    """The trial in ``run_dir``, or None when there is none (no readable ``trial.json``)."""
    record = _read_json(run_dir / TRIAL_FILE)
    if record is None:
        return None
    summary = _read_json(RunLayout(run_dir).summary)
    trial = Trial(record["trial"], run_dir, record["values"], record.get("origin", "?"), "pending",
                  wall_s=record.get("wall_s", 0.0), failure=record.get("failed"))
    if summary is not None:
        trial.objective, trial.trained_omega_loss = _finite(summary.get(OBJECTIVE)), _finite(summary.get(TRAINED_OMEGA))
        trial.status = "done" if trial.objective is not None else "failed"
        if trial.objective is None:
            trial.failure = trial.failure or f"{OBJECTIVE} is {summary.get(OBJECTIVE)!r}, not a finite number"
    elif trial.failure:
        trial.status = "failed"
    return trial


def _record(run_dir: Path, seconds: float, failure: Optional[str]) -> None:
    path = run_dir / TRIAL_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["wall_s"] = round(data.get("wall_s", 0.0) + seconds, 1)
    data["sessions"] = data.get("sessions", 0) + 1
    data["failed"] = failure
    atomic_write_json(path, data)


def run_trial(run_dir: str, config: dict, make_host: Optional[Callable[[], PluginHost]] = None, *,
              threads: Optional[int] = None) -> Optional[str]:
    """Train (or resume) the trial in ``run_dir`` with ``config`` (every config key, as plain values);
    returns why it failed, or None. A stop by a signal is not a failure: it propagates, and the same
    trial resumes from its checkpoint next time."""
    run_dir_path = Path(run_dir)
    layout = RunLayout(run_dir_path)
    # members side by side (threads given) show no bar: theirs would overwrite each other
    host = member_host(make_host or PluginHost,
                       None if threads is not None else f"{run_dir_path.parent.parent.name}/{run_dir_path.name}")
    log_path = run_dir_path / "wml.log"

    def log(message: str) -> None:
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"{message}\n")

    speed = {"threads": str(threads)} if threads else {}
    t0, failure = time.time(), None
    try:
        try:
            if layout.config.is_file():
                trainer = WMLTrainer.from_run_dir(run_dir_path, host=host, log=log, overrides=speed or None)
                if not layout.summary.is_file():
                    trainer.train()
            else:
                trainer = WMLTrainer.from_config(cfgmod.from_dict({**config, **speed}, host=host), run_dir_path,
                                                 host=host, log=log)
                trainer.train()
        except (TrainingError, RunError, PluginError, cfgmod.ConfigError) as exc:
            failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log(f"Error: {exc}")
        except Exception as exc:  # noqa: BLE001 - anything else is this trial's failure, not the tuning's
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            log(f"Error: {traceback.format_exc()}")
        else:
            trial = read_trial(run_dir_path)
            failure = trial.failure if trial is not None and trial.status == "failed" else None
    finally:
        _record(run_dir_path, time.time() - t0, failure)
    return failure
