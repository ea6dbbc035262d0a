"""One process per run folder: an advisory lock (``RUN_DIR/.lock``), held while a run works on it.

Why: two ``wml run`` processes on one ``--out`` would interleave checkpoints and metrics. The lock
is ``flock``-based, so the operating system releases it when its process dies, even by SIGKILL: a
killed run never leaves a stale lock behind. Re-entrant within a process.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None

__all__ = ["LOCK_FILE", "RunLockedError", "locked"]

LOCK_FILE = ".lock"
_held: dict[str, list] = {}   # resolved path -> [fd, depth]


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


@contextmanager
def locked(run_dir) -> Iterator[None]:
    path = str((Path(run_dir) / LOCK_FILE).resolve())
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunLockedError(f"{str(run_dir)!r} is in use by another wml process (pid {holder}); "
                                     "wait for it to finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[path] = [fd, 1]
        try:
            yield
        finally:
            del _held[path]
    finally:
        os.close(fd)   # closing the descriptor releases the lock
