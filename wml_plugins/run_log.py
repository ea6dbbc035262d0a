"""Built-in run observer: a progress bar on a terminal, plain log lines otherwise.

It only watches ``wml_run_event``; ``metrics.jsonl`` is written by the trainer itself, so
blocking this plugin (``WML_BLOCK_PLUGINS=run_log``) silences the progress display only. The
display itself is the core's (:class:`wml_framework.training.progress.RunProgress`), which
``wml compare`` shows for each of its members too.
"""

from __future__ import annotations

from wml_framework import hookimpl
from wml_framework.training.progress import RunProgress

__all__ = ["wml_run_event"]

_progress = RunProgress()


@hookimpl
def wml_run_event(event, payload):
    _progress(event, payload)
