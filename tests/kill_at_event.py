"""Run the ``wml`` command line in this process and SIGKILL it at the first run event that matches.

    python tests/kill_at_event.py 'checkpoint:step=10,run_dir~ce-seed1337' compare --out …

A kill chosen by an event, not by a clock: it lands at the same point of the run however loaded the
machine is (a kill timed in seconds lands earlier or later with the load, or never, when the run is
quicker than the time drawn). ``EVENT:KEY=VALUE,…`` matches an event whose payload has each KEY
equal to VALUE (compared as text); ``KEY~TEXT`` matches a payload value that contains TEXT.
"""

from __future__ import annotations

import os
import signal
import sys

from wml_framework import hookimpl
from wml_framework.plugin_system.host import get_host


def parse(spec: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``'train:step=5'`` -> ``('train', [('step', '=', '5')])``."""
    event, _, rest = spec.partition(":")
    conditions = []
    for part in filter(None, rest.split(",")):
        op = "~" if "~" in part and ("=" not in part or part.index("~") < part.index("=")) else "="
        key, _, value = part.partition(op)
        conditions.append((key, op, value))
    return event, conditions


def matches(spec: tuple[str, list], event: str, payload: dict) -> bool:
    name, conditions = spec
    if event != name:
        return False
    for key, op, value in conditions:
        if key not in payload:
            return False
        got = str(payload[key])
        if (op == "=" and got != value) or (op == "~" and value not in got):
            return False
    return True


class KillAt:
    """A run observer that SIGKILLs its own process at the first matching event: no cleanup runs,
    as when the machine loses power or the OOM killer strikes."""

    def __init__(self, spec: str):
        self.spec = parse(spec)

    @hookimpl
    def wml_run_event(self, event, payload):
        if matches(self.spec, event, payload):
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    get_host().register(KillAt(argv[0]), "kill-at-event")
    from wml_framework.cli import main as wml

    wml.main(argv[1:], prog_name="wml")


if __name__ == "__main__":
    main(sys.argv[1:])
