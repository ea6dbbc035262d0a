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
    """A member that trains until stopped, as a run does: a signal inside its (endless) step is
    deferred, the step ends, its checkpoint is written, then it stops. A second signal would stop it
    at once, without the checkpoint."""
    from wml_framework.runtime import interrupts

    with interrupts.handling():
        with interrupts.deferred():
            Path(folder, f"{name}.ready").write_text("")
            while interrupts.pending() is None:
                time.sleep(0.02)
            Path(folder, f"{name}.checkpoint").write_text(str(interrupts.pending()))
        interrupts.raise_pending()


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
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def prepares_corpus(corpus: str, cache: str, barrier, *, threads=None):
    """A member preparing the corpus's token streams at the same moment as another (the barrier)."""
    from wml_framework.text.tokens import prepare

    barrier.wait()
    lines: list = []
    data = prepare(corpus, 300, 0.1, cache=Path(cache), log=lines.append)
    return len(data.train), len(data.val), any("cached token streams" in line for line in lines)
