"""How many CPU threads torch uses for training, chosen by measuring the run's own steps.

Why measured, not fixed: on an idle 2-core machine two threads are faster, but on a shared one
(20–40% CPU steal was seen) a 2-thread torch process waits on its slower thread at every small
operation and one thread often wins by 2–4×. The load average says too little about that. So
``threads = "auto"`` times real training steps at each candidate (1 and all cores), interleaved,
keeps the faster, and measures again every ``REPROBE_EVERY`` steps, since load changes during a
run. No step is wasted: the probes are the run's own steps.
"""

from __future__ import annotations

import os
import statistics
from typing import Optional

import torch

__all__ = ["parse_threads", "ThreadGovernor"]

#: steps timed per candidate in one probe round, and how often (in steps) a round starts again
PROBE_STEPS, REPROBE_EVERY = 3, 100


def parse_threads(spec) -> Optional[int]:
    """``"auto"`` (or None) → None (the caller decides), a whole number ≥ 1 (or its digits) → that count.

    The one reading of the ``threads`` setting and of ``wml eval --threads``: the configuration
    checks with it, training and scoring use it, so all three accept the same values."""
    if spec is None or spec == "auto":
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        n = spec
    elif isinstance(spec, str) and spec.strip().isdecimal():
        n = int(spec)
    else:
        n = 0
    if n < 1:
        raise ValueError(f"threads must be a number ≥ 1 or 'auto', got {spec!r}")
    return n


class ThreadGovernor:
    """Sets torch's thread count before each step; with ``auto``, probes and keeps the faster.

    Call :meth:`before_step` before a step and :meth:`after_step` with its duration. Steps that
    are not comparable (an outer step, an evaluation) are reported with ``comparable=False``
    and ignored.
    """

    def __init__(self, spec="auto", device_type: str = "cpu", cores: Optional[int] = None):
        fixed = parse_threads(spec)
        # ranks of one node (torchrun's LOCAL_WORLD_SIZE) share its cores
        cores = cores or max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        self.active = device_type == "cpu"
        self.candidates = [fixed] if fixed is not None else sorted({1, cores})
        self.current = self.candidates[-1]
        self._times: dict[int, list] = {c: [] for c in self.candidates}
        self._steps = 0
        self._probing = len(self.candidates) > 1
        self.choices: list[tuple[int, int]] = []   # (step, threads) each time a probe round decides

    def before_step(self) -> None:
        if not self.active:
            return
        if self._probing:
            # alternate candidates, so a slow moment of a shared machine hits both alike
            counts = [len(self._times[c]) for c in self.candidates]
            self.current = self.candidates[counts.index(min(counts))]
        torch.set_num_threads(self.current)

    def after_step(self, seconds: float, comparable: bool = True) -> None:
        if not self.active:
            return
        self._steps += 1
        if self._probing and comparable:
            self._times[self.current].append(seconds)
            if all(len(t) >= PROBE_STEPS for t in self._times.values()):
                medians = {c: statistics.median(t) for c, t in self._times.items()}
                self.current = min(medians, key=medians.get)
                self.choices.append((self._steps, self.current))
                self._probing = False
                torch.set_num_threads(self.current)
        elif not self._probing and len(self.candidates) > 1 and self._steps % REPROBE_EVERY == 0:
            self._times = {c: [] for c in self.candidates}
            self._probing = True
