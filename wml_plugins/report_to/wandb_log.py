"""``report_to = ["wandb"]``: the run's records in a Weights & Biases run kept in ``<run>/wandb/``.

Offline by default, so a run needs no account and no network (upload later with ``wandb sync
<run>/wandb/offline-run-*``); ``WANDB_MODE`` (``online``, ``disabled``), ``WANDB_PROJECT`` and
``WANDB_ENTITY`` are respected when set. The run's config is the W&B run's config, its folder name
the W&B run's name. Every value is logged against the record's step, as W&B's step metric
``step``: W&B's own row counter only grows, and a resumed run logs again the steps after its
checkpoint. A resumed run continues the same W&B run: its id is kept in ``<run>/wandb/wml-run-id``,
and ``wandb sync`` uploads the folders of one id in the order they were written.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from wml_framework import hookimpl
from wml_framework.runtime.atomic import atomic_write_text

from .observer import RunObserver

__all__ = ["FOLDER", "ID_FILE", "PROJECT", "WandbWriter", "run_id", "wml_run_event"]

FOLDER = "wandb"                  # where wandb.init(dir=<run>) keeps its files
ID_FILE = "wml-run-id"
PROJECT = "wml"                   # unless WANDB_PROJECT names another


def run_id(run_dir: Path) -> str:
    """The W&B run id of the run in ``run_dir``: the one kept there, else a new one, kept."""
    path = run_dir / FOLDER / ID_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    new = secrets.token_hex(4)          # W&B's own ids are 8 characters of [a-z0-9] too
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, new + "\n")
    return new


class WandbWriter:
    def __init__(self, run_dir: Path, start: int, config: dict):  # noqa: ARG002 - W&B's step metric needs no purge
        import wandb

        mode = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        self.run = wandb.init(dir=str(run_dir), id=run_id(run_dir), resume="allow", name=run_dir.name,
                              project=os.environ.get("WANDB_PROJECT") or PROJECT, config=config,
                              reinit="create_new", **mode)
        self.run.define_metric("step", hidden=True)
        self.run.define_metric("*", step_metric="step")

    def write(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "step": step})

    def flush(self) -> None:
        """W&B's service writes as it goes; nothing is buffered here."""

    def close(self) -> None:
        self.run.finish()


_observer = RunObserver("wandb", WandbWriter)


@hookimpl
def wml_run_event(event, payload):
    """Weights & Biases run of every record in <run>/wandb/ (offline unless WANDB_MODE), for runs with report_to = ["wandb"]."""
    _observer(event, payload)
