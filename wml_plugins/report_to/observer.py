"""What the TensorBoard and W&B observers share: one open writer per run folder, for the runs whose
``report_to`` names the destination, on rank 0 only.

A writer opens at ``run_start`` (told the step the run starts from, so a resumed run appends after
its checkpoint), writes the scalars of every ``train``, ``outer`` and ``eval`` record, flushes at each
checkpoint (what a resume restarts from is on disk with it) and closes at ``run_end``. A writer left
open (an interrupted run, an observer silenced by a failure) is closed at exit, before the tool's
own exit hooks (W&B stops its service in one), and a run started again in the same process replaces it.
"""

from __future__ import annotations

import atexit
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wml_framework.api import Event
from wml_framework.runtime import distributed

from .scalars import scalars

__all__ = ["Writer", "RunObserver"]

RECORDS = {Event.TRAIN.value, Event.OUTER.value, Event.EVAL.value}


class Writer(Protocol):
    def write(self, values: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Open:
    writer: Writer
    num_peers: int


class RunObserver:
    """Calls ``open(run_dir, start_step, config) -> Writer`` for each run of this destination; an
    instance is the plugin's ``wml_run_event``."""

    def __init__(self, name: str, open_writer):
        self.name, self.open_writer = name, open_writer
        self.runs: dict[str, _Open] = {}
        self._closes_at_exit = False

    def __call__(self, event: str, payload: dict) -> None:
        run = str(payload.get("run_dir"))
        if event == Event.RUN_START.value:
            self._close(run)
            config = payload.get("config") or {}
            if self.name in config.get("report_to", ()) and distributed.current().is_main:
                writer = self.open_writer(Path(run), int(payload["step"]), config)
                self.runs[run] = _Open(writer, int(payload["num_peers"]))
                if not self._closes_at_exit:   # registered after the tool's own exit hooks, so it runs before them
                    atexit.register(self.close_all)
                    self._closes_at_exit = True
            return
        opened = self.runs.get(run)
        if opened is None:
            return
        if event in RECORDS:
            opened.writer.write(scalars(payload, opened.num_peers), int(payload["step"]))
        elif event == Event.CHECKPOINT.value:
            opened.writer.flush()
        elif event == Event.RUN_END.value:
            self._close(run)

    def _close(self, run: str) -> None:
        opened = self.runs.pop(run, None)
        if opened is not None:
            opened.writer.close()

    def close_all(self) -> None:
        """At exit: close what is still open, each writer on its own (one line for one that fails,
        as the host reports an observer's failure, rather than a traceback at exit)."""
        for run in list(self.runs):
            try:
                self._close(run)
            except Exception as exc:  # noqa: BLE001 - the process is ending; say it, in one line
                print(f"warning: run observer plugin {self.name!r} could not close its log of {run} at exit: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)

