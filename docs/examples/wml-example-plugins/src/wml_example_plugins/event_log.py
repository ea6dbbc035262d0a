"""A run observer: every run event as one JSON line in the file ``$WML_EXAMPLE_EVENT_LOG`` (when set).

``wml_run_event`` receives the event name (``run_start``, ``train``, ``outer``, ``eval``,
``checkpoint``, ``run_end``) and a dict of plain values: for ``train``, ``outer`` and ``eval``, the
record the run logs to ``metrics.jsonl``. Observers watch; to steer a run from Python, use a callback.
"""

from __future__ import annotations

import json
import os

from wml_framework import hookimpl


@hookimpl
def wml_run_event(event, payload):
    path = os.environ.get("WML_EXAMPLE_EVENT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": event, "step": payload.get("step"), "kind": payload.get("kind")}) + "\n")
