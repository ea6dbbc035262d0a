"""Run the ``wml`` command line in this process and SIGKILL it at the first run event that matches
(or send it another signal: ``SIGTERM@train:step=3``).

    python tests/kill_at_event.py 'checkpoint:step=10,run_dir~ce-seed1337' compare --out …
    python tests/kill_at_event.py 'SIGINT@train:step=10' run --config tiny.toml --out …

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
from wml_framework.plugin_system.host import PluginHost, get_host


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
    """A run observer that signals its own process at the first matching event, once. SIGKILL (the
    default): no cleanup runs, as when the machine loses power or the OOM killer strikes; SIGTERM or
    SIGINT: what a scheduler or Ctrl-C sends, delivered as from outside."""

    def __init__(self, spec: str):
        name, _, rest = spec.rpartition("@")
        self.signum = signal.Signals[name] if name else signal.SIGKILL
        self.spec, self.sent = parse(rest), False

    @hookimpl
    def wml_run_event(self, event, payload):
        if not self.sent and matches(self.spec, event, payload):
            self.sent = True
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), self.signum)


def main(argv: list[str]) -> None:
    killer = KillAt(argv[0])
    plain_init = PluginHost.__init__

    def init_with_killer(self, *args, **kwargs):
        """Every plugin host of this process hears the killer: ``wml compare`` gives each of its
        members a host of its own, loaded afresh from the entry points."""
        plain_init(self, *args, **kwargs)
        self.register(killer, "kill-at-event")

    PluginHost.__init__ = init_with_killer
    get_host()
    from wml_framework.cli import main as wml

    wml.main(argv[1:], prog_name="wml")


if __name__ == "__main__":
    main(sys.argv[1:])
