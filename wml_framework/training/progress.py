"""The run's progress display: one implementation for every place that shows a run going by, the
built-in observer ``run_log`` (``wml run``) and each member of ``wml compare``.

It reads run events (``api.Event``) and their payloads, nothing else, so it works as a
``wml_run_event`` observer. On a terminal it keeps one tqdm bar per run. With ``detail`` (the
default) the bar also shows each peer's CE and ω, phases, evaluations and skipped updates are
printed as lines (above the bar), and off a terminal a summary line comes every ~10% of the steps
instead of the bar. Without ``detail`` (a comparison's member, whose own log is a file) only the
bar shows, and nothing at all off a terminal.
"""

from __future__ import annotations

import sys

__all__ = ["RunProgress"]


def _num(value, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


class RunProgress:
    """Call it with every run event: ``progress(event, payload)``."""

    def __init__(self, desc: str = "wml", *, detail: bool = True, leave: bool = True):
        self.desc, self.detail, self.leave = desc, detail, leave
        self.bar = None
        self.total = 0
        self.every = 1

    def __call__(self, event, payload: dict) -> None:
        handler = {"phase": self.phase, "run_start": self.start, "train": self.step, "eval": self.evaluation,
                   "run_end": self.end}.get(str(event))
        if handler is not None:
            handler(payload)

    def start(self, payload: dict) -> None:
        self.total = int(payload.get("total_steps", 0))
        self.every = max(1, self.total // 10)
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=int(payload.get("step", 0)), desc=self.desc, unit="step",
                            leave=self.leave, dynamic_ncols=True)

    def step(self, p: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if not self.detail:
            return
        ce = " ".join(_num(v, ".2f") for v in p["ce"])
        omega = " ".join(_num(v, ".3f") for v in p["omega"])
        if p.get("skipped"):
            skipped = ", ".join(f"peer_{i}" for i in p["skipped"])
            self._write(f"step {p['step']}: skipped the update of {skipped} (non-finite loss or gradient)")
        if self.bar is not None:
            self.bar.set_postfix_str(f"ce [{ce}] ω [{omega}]")
        elif p["step"] % self.every == 0 or p["step"] == self.total:
            print(f"step {p['step']}/{self.total}  ce [{ce}]  kl [{' '.join(_num(v, '.3f') for v in p['kl'])}]  "
                  f"ω [{omega}]  lr {p['lr']:.2e}  {p.get('tokens_per_s', 0):,.0f} tok/s", file=sys.stderr, flush=True)

    def evaluation(self, p: dict) -> None:
        if self.detail:
            peers = " ".join(_num(v, ".3f") for v in p["val_loss"])
            self._write(f"eval @ {p['step']}: peers [{peers}]  ensemble {_num(p['ensemble_val_loss'], '.3f')}")

    def phase(self, p: dict) -> None:
        if self.detail:
            self._write(f"phase: {p['phase']}")

    def end(self, payload: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write(self, line: str) -> None:
        """A line that does not break the progress bar (printed above it), or a plain line."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
