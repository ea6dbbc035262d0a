"""The Python API: docs/api.md's example runs as written, and callbacks can stop, save and evaluate.

Would catch: an example that drifted from the API, root exports that went missing, a control flag
the loop ignores, and events whose names differ from the records they announce.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from run_helpers import read_metrics, tiny_config

import wml_framework

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_root_exports_are_declared_and_importable():
    for name in wml_framework.__all__:
        assert getattr(wml_framework, name) is not None, name
    assert {"WMLConfig", "load_config", "WMLTrainer", "evaluate"} <= set(wml_framework.__all__)


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(DOC), "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    assert "ensemble minimal pairs" in out and "ω" in out
    run = tmp_path / "runs" / "api-demo"
    for name in ("summary.json", "eval.json", "report.md"):
        assert (run / name).is_file(), name


class Steering:
    """Asks the peers' loop for an evaluation at step 3, a checkpoint at step 5 and a stop at step 6
    (the teacher's loop, which callbacks hear too, is only counted)."""

    def __init__(self):
        self.events, self.teacher_steps = [], []

    def on_run_start(self, payload, state, control):
        if state.model == "peers":
            self.events.append(("run_start", payload["step"]))

    def on_train(self, payload, state, control):
        if state.model == "teacher":
            self.teacher_steps.append(state.step)
            return
        self.events.append(("train", payload["kind"]))
        control.should_evaluate = state.step == 3
        control.should_save = state.step == 5
        control.should_stop = state.step == 6

    def on_eval(self, payload, state, control):
        if state.model == "peers":
            self.events.append(("eval", payload["kind"]))

    def on_checkpoint(self, payload, state, control):
        if state.model == "peers":
            self.events.append(("checkpoint", payload["step"]))

    def on_run_end(self, payload, state, control):
        if state.model == "peers":
            self.events.append(("run_end", payload["stopped_by_callback"]))


def test_callbacks_stop_save_and_evaluate(tmp_path, corpus):
    from wml_framework import WMLTrainer

    cfg = tiny_config(corpus, max_steps=10, eval_interval=50, checkpoint_interval=50, blimp="")
    cb = Steering()
    trainer = WMLTrainer.from_config(cfg, tmp_path / "run", callbacks=[cb], log=lambda m: None)
    summary = trainer.train()
    assert summary["steps"] == 6 and not summary["stopped_early"]
    evals = [r["step"] for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert evals == [0, 3]                                          # step 0, then the one asked for
    assert ("checkpoint", 5) in cb.events and ("checkpoint", 6) in cb.events
    assert cb.events[0] == ("run_start", 0) and cb.events[-1] == ("run_end", True)
    assert all(kind == name for name, kind in cb.events if name in ("train", "eval"))
    assert cb.teacher_steps == list(range(1, cfg.teacher_steps + 1))   # the teacher's loop, told apart by state.model
    resumed = WMLTrainer.from_run_dir(tmp_path / "run", log=lambda m: None).train()
    assert resumed["steps"] == 10                                   # a stopped run resumes to max_steps
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 10
