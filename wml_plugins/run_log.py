"""Built-in run observer: a progress bar on a terminal, plain log lines otherwise.

It only watches ``wml_run_event``; ``metrics.jsonl`` is written by the trainer itself, so
blocking this plugin (``WML_BLOCK_PLUGINS=run_log``) silences the progress display only.
"""

from __future__ import annotations

import sys

from wml_framework import hookimpl

__all__ = ["ProgressLog", "wml_run_event"]


def _num(value, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


class ProgressLog:
    """Keeps one tqdm bar per run when stderr is a TTY; prints every ~10% otherwise."""

    def __init__(self):
        self.bar = None
        self.total = 0
        self.every = 1

    def start(self, payload: dict) -> None:
        self.total = int(payload.get("total_steps", 0))
        self.every = max(1, self.total // 10)
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=int(payload.get("step", 0)), desc="wml", unit="step",
                            dynamic_ncols=True)

    def step(self, p: dict) -> None:
        ce = " ".join(_num(v, ".2f") for v in p["ce"])
        omega = " ".join(_num(v, ".3f") for v in p["omega"])
        if p.get("skipped"):
            skipped = ", ".join(f"peer_{i}" for i in p["skipped"])
            line = f"step {p['step']}: skipped the update of {skipped} (non-finite loss or gradient)"
            self._write(line)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"ce [{ce}] ω [{omega}]")
        elif p["step"] % self.every == 0 or p["step"] == self.total:
            print(f"step {p['step']}/{self.total}  ce [{ce}]  kl [{' '.join(_num(v, '.3f') for v in p['kl'])}]  "
                  f"ω [{omega}]  lr {p['lr']:.2e}  {p.get('tokens_per_s', 0):,.0f} tok/s", file=sys.stderr, flush=True)

    def evaluation(self, p: dict) -> None:
        peers = " ".join(_num(v, ".3f") for v in p["val_loss"])
        self._write(f"eval @ {p['step']}: peers [{peers}]  ensemble {_num(p['ensemble_val_loss'], '.3f')}")

    def phase(self, p: dict) -> None:
        self._write(f"phase: {p['phase']}")

    def _write(self, line: str) -> None:
        """A line that does not break the progress bar (printed above it), or a plain line."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_progress = ProgressLog()


@hookimpl
def wml_run_event(event, payload):
    if event == "phase":
        _progress.phase(payload)
    elif event == "run_start":
        _progress.start(payload)
    elif event == "train":
        _progress.step(payload)
    elif event == "eval":
        _progress.evaluation(payload)
    elif event == "run_end":
        _progress.end()
