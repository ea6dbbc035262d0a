"""When a plugin fails during a run (issue 21 §5): a raising observer costs one line, not the run;
an updater that keeps returning a non-finite ω stops the run like a failing peer does; every plugin
error raised during training says the step it came at; the summary says what happened.

Would catch: a logger's exception killing a run of many hours (or the other observers), reported
without its plugin or step, or again at every event; an observer's isolation swallowing a signal's
``Interrupted``; an updater skipped forever; a skip counter a resume forgets; errors that only the
log can place in time; a summary calling equal losses "below".
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from run_helpers import read_metrics, tiny_config

from wml_framework import config as cfgmod
from wml_framework import hookimpl
from wml_framework.api import UpdateResult, uniform_omega
from wml_framework.cli import main
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import PluginError, PluginHost
from wml_framework.runtime import checkpoint
from wml_framework.runtime.interrupts import Interrupted
from wml_framework.training.export import print_summary
from wml_framework.training.loop import TrainingError

# ----------------------------------------------------------------------------- observers

class Recorder:
    """A well-behaved observer: every event it hears, with its step or phase."""

    def __init__(self):
        self.heard = []

    @hookimpl
    def wml_run_event(self, event, payload):
        self.heard.append((event, payload.get("phase") if event == "phase" else payload.get("step")))


class FailsAt:
    """An observer that raises at one event (a phase, or an event at a step) and counts its calls."""

    def __init__(self, event, at):
        self.event, self.at, self.calls = event, at, []

    @hookimpl
    def wml_run_event(self, event, payload):
        self.calls.append(event)
        where = payload.get("phase") if event == "phase" else payload.get("step")
        if event == self.event and where == self.at:
            raise OSError("the dashboard went away")


def test_a_raising_observer_costs_one_line_and_the_run_finishes(tmp_path, corpus, monkeypatch):
    """A real ``wml run`` with one observer failing at the very first event (the ``data`` phase)
    and one failing at step 2: exit 0, peers saved, one line each naming plugin, event and step,
    neither called again, the well-behaved observer hears every event, the summary says so."""
    first, later, recorder = FailsAt("phase", "data"), FailsAt("train", 2), Recorder()
    host = PluginHost()
    host.register(first, "first_event_crasher")
    host.register(later, "csv_writer")
    host.register(recorder, "recorder")
    monkeypatch.setattr(plugins, "_HOST", host)
    cfg_file = tmp_path / "c.toml"
    values = tiny_config(corpus, host, max_steps=4, lr_decay_iters=4, teacher_steps=2, blimp="",
                         checkpoint_interval=2).to_dict()
    values.pop("plugins")
    cfg_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--config", str(cfg_file), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "peers" / "peer_0" / "config.json").is_file() and (run / "summary.json").is_file()

    lines = result.output.splitlines()
    said_first = [l for l in lines if "run observer plugin 'first_event_crasher' failed on event 'phase'" in l]
    said_later = [l for l in lines if "run observer plugin 'csv_writer' failed on event 'train' at step 2" in l]
    assert len(said_first) == 1 and "(phase 'data')" in said_first[0] and "OSError" in said_first[0]
    assert len(said_later) == 1 and "the dashboard went away" in said_later[0]
    assert first.calls == ["phase"]                                      # silenced after its failure
    assert later.calls.count("train") == 2 and later.calls[-1] == "train"

    phases = [at for event, at in recorder.heard if event == "phase"]
    assert phases == ["data", "teacher", "peers", "training", "export", "evaluation", "report"]
    assert [at for event, at in recorder.heard if event == "train"] == [1, 2, 3, 4]
    assert [e for e, _ in recorder.heard if e in ("run_start", "run_end")] == ["run_start", "run_end"]

    summary = json.loads((run / "summary.json").read_text())
    assert [(f["plugin"], f["event"], f["step"]) for f in summary["observer_failures"]] == [
        ("first_event_crasher", "phase", None), ("csv_writer", "train", 2)]
    assert any("observer 'csv_writer' heard nothing after it failed on event 'train' at step 2" in l for l in lines)


@pytest.mark.parametrize("stop", [Interrupted(signal.SIGTERM), KeyboardInterrupt()])
def test_a_signal_raised_inside_an_observer_still_stops_the_run(stop):
    """Only ``Exception`` is isolated: a signal handler's ``Interrupted`` (raised wherever the
    program is, an observer included) and Ctrl-C go through."""
    class Stopping:
        @hookimpl
        def wml_run_event(self, event):
            raise stop

    host = PluginHost(load_entry_points=False)
    host.register(Stopping(), "stopping")
    with pytest.raises(type(stop)):
        host.emit("phase", {"phase": "data", "run_dir": "r"}, log=lambda m: None)
    assert host.observer_failures("r") == []


# ----------------------------------------------------------------------------- updaters and losses

class StepUpdater:
    """An updater whose ``step`` is ``fn(call_number, ctx)``; it keeps no state."""

    needs_validation = True

    def __init__(self, num_peers, fn):
        self.num_peers, self.fn, self.calls = num_peers, fn, 0

    def initial_omega(self):
        return uniform_omega(self.num_peers)

    def step(self, ctx):
        self.calls += 1
        return self.fn(self.calls, ctx)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


NAN = UpdateResult(omega=torch.tensor([float("nan"), 1.0], dtype=torch.float64))


def _loop(run_dir, updater_fn=None, loss_fail=None, **changes):
    """A TrainingLoop of two tiny peers on random tokens, with a misbehaving updater ``x`` (its
    step is ``updater_fn``) or a loss ``x`` that raises while ``loss_fail[0]`` is true."""
    from helpers_models import build, tiny_llama_config

    from wml_framework.runner import create_plugins
    from wml_framework.text.tokens import TokenData
    from wml_framework.training.loop import TrainingLoop

    class Plugin:
        @hookimpl
        def wml_register_updaters(self, register):
            if updater_fn is not None:
                register("x", lambda cfg, m: StepUpdater(m, updater_fn))

        @hookimpl
        def wml_register_losses(self, register):
            if loss_fail is not None:
                register("x", lambda cfg: Raising(cfg, loss_fail))

    host = PluginHost()
    host.register(Plugin(), "misbehaving")
    which = {"updater": "x"} if updater_fn is not None else {"loss": "x"}
    cfg = cfgmod.from_dict({"device": "cpu", "batch_size": 2, "block_size": 8, "num_batches": 1, "vocab_size": 300,
                            "max_steps": 6, "eval_batches": 1, "eval_interval": 100, "threads": "1", "num_peers": 2,
                            "outer_every": 1, "nonfinite_patience": 3, **which, **changes}, host=host)
    rng = np.random.default_rng(0)
    data = TokenData(rng.integers(3, 128, 3000).astype(np.uint16), rng.integers(3, 128, 1000).astype(np.uint16),
                     None, 128)
    peers = [build(tiny_llama_config(hidden=16, n_head=2), seed=i).train() for i in range(2)]
    made = create_plugins(cfg, host)
    lines = []
    loop = TrainingLoop(cfg, host, peers, data, run_dir, torch.device("cpu"), loss=made.loss, updater=made.updater,
                        log=lines.append)
    return loop, lines


class Raising:
    """The built-in wml loss, raising while its switch is on."""

    needs_teacher = False

    def __init__(self, cfg, switch):
        from wml_plugins.losses.wml import WMLLoss

        self.inner, self.switch = WMLLoss.from_config(cfg), switch

    def __call__(self, logits, labels, omega, teacher_logits=None):
        if self.switch[0]:
            raise ValueError("a shape I did not expect")
        return self.inner(logits, labels, omega)


def test_an_updater_that_keeps_returning_nan_stops_the_run_naming_it_and_keeps_the_checkpoints(tmp_path):
    loop, lines = _loop(tmp_path, lambda n, ctx: NAN, checkpoint_interval=2)
    with pytest.raises(TrainingError, match=r"plugin 'misbehaving' \(updater 'x' step\(\)\) returned a non-finite ω "
                                            r"in 3 consecutive outer steps \(the last at step 3"):
        loop.train()
    assert checkpoint.load(tmp_path, warn=lambda m: None)["step"] == 2          # intact, and loads
    skipped = [r for r in read_metrics(tmp_path) if r["kind"] == "outer"]
    assert [r["step"] for r in skipped] == [1, 2] and all("not finite" in r["skipped"] for r in skipped)
    assert sum("outer step skipped" in line for line in lines) == 2


def test_only_consecutive_skipped_outer_steps_count(tmp_path):
    """NaN, NaN, fine, NaN, NaN with a patience of 3: the good step in between resets the count."""
    loop, _ = _loop(tmp_path, lambda n, ctx: UpdateResult(omega=ctx.omega) if n == 3 else NAN, max_steps=5)
    loop.train()
    assert loop.state.step == 5 and loop.state.nonfinite_outer == 2


def test_the_skip_count_survives_a_resume(tmp_path):
    """Two skipped outer steps, a checkpoint, a resume that trains on: the third skip in a row
    stops it at step 3, as it would have without the resume (not at step 5)."""
    first, _ = _loop(tmp_path, lambda n, ctx: NAN, max_steps=2)
    first.train()
    again, _ = _loop(tmp_path, lambda n, ctx: NAN, max_steps=6)
    again.resume(checkpoint.load(tmp_path, warn=lambda m: None))
    with pytest.raises(TrainingError, match=r"3 consecutive outer steps \(the last at step 3"):
        again.train()


def test_plugin_errors_during_training_say_the_step(tmp_path):
    """Would catch: "ω sums to 2, not 1" with no step, when it came at step 4."""
    doubling_from_4 = lambda n, ctx: UpdateResult(omega=ctx.omega * (2 if n == 4 else 1))   # noqa: E731
    loop, _ = _loop(tmp_path / "u", doubling_from_4)
    with pytest.raises(PluginError, match=r"plugin 'misbehaving' failed in updater 'x' step\(\), at step 4: .*sums to 2"):
        loop.train()

    switch = [False]
    loop, _ = _loop(tmp_path / "l", loss_fail=switch)
    loop.step()
    loop.step()
    switch[0] = True
    with pytest.raises(PluginError, match=r"loss 'x' at run time, at step 3: ValueError: a shape I did not expect"):
        loop.step()


# ----------------------------------------------------------------------------- the summary

def _summary(ensemble, peers):
    return {"teacher": None, "champion": "peer_0", "omega": [0.5, 0.5], "ensemble_val_loss": ensemble,
            "peers": [{"name": f"peer_{i}", "parameters": 10, "omega": 0.5, "val_loss": v} for i, v in enumerate(peers)]}


@pytest.mark.parametrize("ensemble, peers, verdict", [
    (6.23541, [6.23539, 7.0], "is equal to the best single peer's (6.2354 vs best 6.2354)"),
    (6.2354, [6.2354, 7.0], "is equal to the best single peer's (6.2354 vs best 6.2354)"),
    (6.1, [6.2354, 7.0], "is below every single peer's (6.1000 vs best 6.2354)"),
    (6.3, [6.2354, 7.0], "is NOT below every single peer's (6.3000 vs best 6.2354)"),
])
def test_the_summary_calls_losses_equal_when_they_print_alike(ensemble, peers, verdict):
    lines = []
    print_summary(_summary(ensemble, peers), lines.append)
    assert f"ensemble held-out loss {verdict}" in lines


def test_the_summary_prints_the_peers_diversity_when_measured():
    """Catches the diversity line missing, or printed for a run that did not measure it (an older
    summary.json, a single peer)."""
    lines = []
    print_summary({**_summary(6.1, [6.2, 7.0]), "diversity": {"js": 0.01234}}, lines.append)
    assert any("mean pairwise Jensen–Shannon divergence 0.0123 nats" in line for line in lines)
    for diversity in (None, {"js": None}):
        lines = []
        print_summary({**_summary(6.1, [6.2, 7.0]), "diversity": diversity}, lines.append)
        assert not any("Jensen" in line for line in lines)
