"""Module-level member functions for tests/test_compare_jobs.py (a pool pickles them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_pid(folder: str, name: str, *, threads=None):
    """A member that records the process it ran in and the threads it was given."""
    Path(folder, f"{name}.txt").write_text(f"{os.getpid()} {threads}")
    return None


def fails(message: str, *, threads=None):
    raise RuntimeError(message)


def reports_failure(message: str, *, threads=None):
    return message


def waits_for_a_signal(folder: str, name: str, *, threads=None):
    """A member that trains until stopped: ready once its handlers are in, then it stops cleanly
    (as a run does: its checkpoint written) when a signal arrives."""
    from wml_framework.runtime import interrupts

    with interrupts.handling():
        Path(folder, f"{name}.ready").write_text("")
        try:
            while True:
                time.sleep(0.05)
        except interrupts.Interrupted as exc:
            Path(folder, f"{name}.stopped").write_text(exc.name)
            raise


def waits_for_file(folder: str, name: str, *, threads=None):
    """A member that ends only once another member has created ``name`` in ``folder``."""
    path = Path(folder, name)
    while not path.exists():
        time.sleep(0.02)
    return None


def creates_file(folder: str, name: str, *, threads=None):
    Path(folder, name).write_text("")
    return None


def stopped_by_a_signal(*, threads=None):
    """A member whose run was stopped by SIGTERM (it raises what a stopped run raises)."""
    import signal

    from wml_framework.runtime.interrupts import Interrupted

    raise Interrupted(signal.SIGTERM, step=7)


def dies(*, threads=None):
    """A member whose process is killed outright (as the out-of-memory killer would)."""
    os._exit(9)
