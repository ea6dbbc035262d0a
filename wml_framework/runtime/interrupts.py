"""SIGINT, SIGTERM and SIGUSR1: stop a run cleanly, wherever it is.

Cluster schedulers send SIGTERM (SLURM can be told to send SIGUSR1) some time before they kill.
Inside a training step (the peers' or the teacher's) a signal is *deferred*: the step finishes, a
checkpoint is written, and then the run stops. Anywhere else (tokenizing, sizing peers, exporting,
evaluating) it stops at once: every output is written atomically, so the phase is simply redone on
resume. Either way :class:`Interrupted` is raised, which the command line turns into the resume
command and exit status 128 + the signal's number. A second signal while one is pending stops at
once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

__all__ = ["SIGNALS", "Interrupted", "handling", "deferred", "pending", "agree", "raise_pending"]

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is 128 + its number, as a shell reports it."""

    def __init__(self, signum: int, step: Optional[int] = None):
        self.signum, self.step = signum, step
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def __reduce__(self):
        """Pickled with its own arguments: a stopped member's exception crosses from its process to
        the command's (the default would rebuild it from the message, and fail)."""
        return (type(self), (self.signum, self.step))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _State:
    deferring = 0
    pending: Optional[int] = None


_state = _State()


def _handler(signum, frame):  # noqa: ARG001 - the signal module's signature
    if _state.deferring and _state.pending is None:
        _state.pending = signum
        return
    raise Interrupted(signum)


@contextmanager
def handling() -> Iterator[None]:
    """Install the handlers for the block (main thread only; elsewhere signals keep their defaults).
    Nested use is fine; the previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.pending = None


@contextmanager
def deferred() -> Iterator[None]:
    """A block a signal does not cut short (one training step, one checkpoint write)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def pending() -> Optional[int]:
    """The signal received during a deferred block, if any."""
    return _state.pending


def agree(signum: Optional[int]) -> None:
    """Take a signal another process of the run received as this one's (data-parallel ranks)."""
    if signum is not None and _state.pending is None:
        _state.pending = signum


def raise_pending(step: Optional[int] = None) -> None:
    """Raise :class:`Interrupted` for a pending signal (after the caller saved its checkpoint)."""
    if _state.pending is not None:
        signum, _state.pending = _state.pending, None
        raise Interrupted(signum, step)
