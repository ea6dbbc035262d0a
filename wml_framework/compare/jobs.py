"""Running independent tasks (comparison members, tuning trials): N at a time, here or on a cluster.

This is the sequential stand-in of the interface (one task after another, in this process); the
parallel and SLURM launchers replace it behind the same names. A task is a module-level function
with plain arguments, so that it can be sent to another process: ``fn(*args, threads=T)`` returns
a one-line failure, or None when it succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

__all__ = ["Task", "Launch", "run_tasks"]


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args, threads=T)``; ``name`` is unique among the tasks of one call."""

    name: str
    fn: Callable[..., Optional[str]]
    args: tuple = ()


@dataclass(frozen=True)
class Launch:
    """How tasks run: ``jobs`` at a time, with the ``local`` launcher (or ``slurm`` and its settings)."""

    jobs: int = 1
    launcher: str = "local"
    slurm: Mapping = field(default_factory=dict)


def run_tasks(tasks: Sequence[Task], launch: Launch, *, folder: Path, say: Callable[[str], None] = print,
              on_done: Optional[Callable[[Task, Optional[str]], None]] = None) -> dict[str, Optional[str]]:
    """Run every task and return ``{name: failure or None}``; ``on_done(task, failure)`` hears each
    as it ends. Here: one after another, in this process, with the threads the configuration says."""
    del folder, say                   # used by the parallel launchers (their logs, their lines)
    results: dict[str, Optional[str]] = {}
    for task in tasks:
        failure = task.fn(*task.args, threads=None)
        results[task.name] = failure
        if on_done is not None:
            on_done(task, failure)
    return results
