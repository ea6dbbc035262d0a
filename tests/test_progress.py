"""The run's progress display (``training.progress.RunProgress``), which ``wml run``'s observer and
each member of ``wml compare`` both show.

Would catch: a comparison member printing its per-step lines over the comparison's own (they go to
the member's log), a bar that stops counting steps when the details are off, and ``wml run``'s
lines going missing off a terminal.
"""

from __future__ import annotations

import sys

import pytest

from wml_framework.api import Event
from wml_framework.training.progress import RunProgress

STEPS = 4


def _events():
    yield Event.PHASE, {"phase": "training"}
    yield Event.RUN_START, {"step": 0, "total_steps": STEPS, "num_peers": 2}
    for k in range(1, STEPS + 1):
        yield Event.TRAIN, {"step": k, "ce": [2.5, None], "kl": [0.1, 0.2], "omega": [0.5, 0.5], "lr": 1e-3,
                            "tokens_per_s": 1000.0, "skipped": [1] if k == 2 else []}
    yield Event.EVAL, {"step": STEPS, "val_loss": [2.0, 2.1], "ensemble_val_loss": 1.9}
    yield Event.RUN_END, {"step": STEPS, "stopped_early": False, "stopped_by_callback": False}


def _show(progress: RunProgress) -> None:
    for event, payload in _events():
        progress(event, payload)


def test_off_a_terminal_the_run_prints_lines_and_a_member_nothing(capsys):
    _show(RunProgress("member", detail=False, leave=False))
    assert capsys.readouterr() == ("", "")
    _show(RunProgress())
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "phase: training"
    assert any(line.startswith(f"step {STEPS}/{STEPS}  ce [2.50 nan]") for line in err)
    assert "step 2: skipped the update of peer_1 (non-finite loss or gradient)" in err
    assert err[-1] == f"eval @ {STEPS}: peers [2.000 2.100]  ensemble 1.900"


@pytest.mark.parametrize("detail", [True, False])
def test_on_a_terminal_the_bar_counts_every_step_and_closes(monkeypatch, capsys, detail):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress, seen = RunProgress("m", detail=detail, leave=False), []
    for event, payload in _events():
        progress(event, payload)
        if progress.bar is not None:
            seen.append((progress.bar.n, progress.bar.postfix))
    assert [n for n, _ in seen] == list(range(STEPS + 1)) + [STEPS]   # run_start, each step, the evaluation
    assert progress.bar is None                                        # closed at run_end
    assert all(bool(postfix) == detail for n, postfix in seen if n > 0)   # ce and ω only with the details
    assert ("phase: training" in capsys.readouterr().err) == detail
