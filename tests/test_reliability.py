"""A run that is killed, signalled, fed bad input or NaNs loses nothing and says what happened in
one line (docs/reliability.md lists every case with its test).

Would catch: a checkpoint loaded from half a file, a checkpoint that runs pickled code, a signal that
loses the steps since the last checkpoint, a teacher whose training restarts from zero, a NaN that
reaches ω, and each of three trainer wirings that no earlier test exercised: γ handed to the
updater, the batches the outer step draws, and the ω the inner loss receives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from run_helpers import TINY, read_metrics, tiny_config

from wml_framework import hookimpl
from wml_framework.api import LossResult
from wml_framework.cli import main
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import PluginHost
from wml_framework.runner import WMLTrainer
from wml_framework.runtime import checkpoint
from wml_framework.training.loop import TrainingError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from kill_resume import differences  # noqa: E402

SMALL = dict(max_steps=8, lr_decay_iters=8, eval_interval=4, checkpoint_interval=2, teacher_steps=12, blimp="")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """An uninterrupted run of SMALL, the result every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("ref") / "run"
    WMLTrainer.from_config(tiny_config(corpus, **SMALL), run, log=lambda m: None).train()
    return run


def _cli_config(tmp_path, corpus, **changes) -> Path:
    values = {**TINY, **SMALL, "corpus": str(corpus), **changes}
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


# ------------------------------------------------------------------ recording plugins for the wiring tests

class Recorder:
    """A plugin whose loss and updater wrap the built-ins and write down what they were given."""

    def __init__(self):
        self.loss_omegas, self.outer = [], []

    @hookimpl
    def wml_register_losses(self, register):
        from wml_plugins.losses.wml import WMLLoss

        rec = self

        class RecordingLoss:
            needs_teacher = False

            def __init__(self, cfg):
                self.inner = WMLLoss.from_config(cfg)

            def __call__(self, logits, labels, omega, teacher_logits=None):
                if logits[0].requires_grad:     # the inner step (the hypergradient calls logit_grads)
                    rec.loss_omegas.append(omega.detach().double().cpu().tolist())
                    rec.last_inner_logits = logits[0].detach().clone()
                return self.inner(logits, labels, omega)

            def logit_grads(self, *args, **kwargs):
                return self.inner.logit_grads(*args, **kwargs)

            def mixed_omega_grad(self, *args, **kwargs):
                return self.inner.mixed_omega_grad(*args, **kwargs)

        register("recording", RecordingLoss)

    @hookimpl
    def wml_register_updaters(self, register):
        from wml_plugins.updaters.mirror import MirrorUpdater

        rec = self

        class RecordingMirror(MirrorUpdater):
            def step(self, ctx):
                from wml_plugins.updaters.hypergrad import hypergradient

                with torch.no_grad():
                    now = ctx.forward(ctx.peers[0].eval(), ctx.train.for_peer(0))
                    ctx.peers[0].train()
                fresh = hypergradient(ctx.peers, ctx.loss, ctx.omega, ctx.train, ctx.val, ctx.inner_lr)
                rec.outer.append({"inner_lr": ctx.inner_lr, "val": ctx.val.inputs.cpu().clone(),
                                  "train": ctx.train.inputs.cpu().clone(), "inner": ctx.inner is not None,
                                  "same_weights": torch.allclose(now, rec.last_inner_logits, rtol=0, atol=1e-5),
                                  "fresh": fresh.grad.clone()})
                result = super().step(ctx)
                rec.outer[-1]["reused"] = result.grad.clone()
                return result

        register("recording", lambda cfg, m: RecordingMirror.from_config(cfg, m))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, corpus):
    rec, host = Recorder(), PluginHost()
    host.register(rec, "recorder")
    cfg = tiny_config(corpus, host, loss="recording", updater="recording", max_steps=9, outer_every=2,
                      teacher_steps=10, blimp="", warmup_iters=3, lr_decay_iters=9)
    trainer = WMLTrainer.from_config(cfg, tmp_path_factory.mktemp("rec") / "run", host=host, log=lambda m: None)
    trainer.train()
    return rec, trainer, read_metrics(trainer.run_dir)


def test_gamma_handed_to_the_updater_is_the_learning_rate_of_the_step_it_describes(recorded):
    rec, _, records = recorded
    lr = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    outer_steps = [r["step"] for r in records if r["kind"] == "outer"]
    assert [o["inner_lr"] for o in rec.outer] == [lr[s] for s in outer_steps]
    assert len(set(lr.values())) > 2 and all(o["inner_lr"] > 0 for o in rec.outer)


def test_the_outer_step_sees_the_weights_its_inner_step_started_from(recorded):
    """Would catch: the outer step run after the optimizer step (it then describes neither the step
    taken nor the next), and reused inner gradients that are not the ones a fresh computation gives."""
    rec, _, _ = recorded
    assert rec.outer and all(o["same_weights"] for o in rec.outer)
    assert all(o["inner"] for o in rec.outer)        # llama peers have no dropout: the gradients are offered
    for o in rec.outer:
        assert torch.allclose(o["reused"], o["fresh"], rtol=1e-4, atol=1e-6), (o["reused"], o["fresh"])


def _windows(stream: np.ndarray, width: int) -> set:
    s = np.asarray(stream, dtype=np.int64)
    return {tuple(s[i:i + width]) for i in range(len(s) - width + 1)}


def test_omega_batches_come_from_the_omega_half_of_the_held_out_split_only(recorded):
    rec, trainer, _ = recorded
    data, block = trainer.loop.data, trainer.cfg.block_size
    omega_half, evaluated, train = (_windows(s, block) for s in (data.val_omega, data.val_eval, data.train))
    rows = [tuple(row.tolist()) for o in rec.outer for row in o["val"]]
    assert rows and all(r in omega_half for r in rows)
    assert not any(r in evaluated for r in rows) and not any(r in train for r in rows)


def test_the_inner_loss_receives_the_omega_of_the_last_outer_step(recorded):
    rec, _, records = recorded
    outer_omega = {r["step"]: r["omega"] for r in records if r["kind"] == "outer"}
    current, expected = [0.5, 0.5], []
    for step in range(1, 10):
        expected.append(current)
        if step in outer_omega:
            current = outer_omega[step]
    got = rec.loss_omegas
    assert len(got) == 9 and any(abs(w[0] - 0.5) > 1e-3 for w in got[2:])
    assert np.allclose(got, expected, atol=1e-6)       # float32 on the way in


def test_eval_json_scores_only_the_evaluated_half(recorded):
    from wml_framework.evaluation.heldout import perplexity
    from wml_framework.evaluation.models import load_model

    _, trainer, _ = recorded
    result = trainer.evaluate()
    peer = load_model(trainer.run_dir / "peers" / "peer_0")
    expected = perplexity(peer, trainer.loop.data.val_eval, trainer.cfg.block_size)
    assert result["models"]["peer_0"]["perplexity"]["loss"] == pytest.approx(expected["loss"], rel=1e-9)
    assert result["models"]["peer_0"]["perplexity"]["tokens"] == expected["tokens"]


# ------------------------------------------------------------------ non-finite values

class NaNLoss:
    """The built-in wml loss, with peer 1's loss replaced by NaN at the chosen steps (counting calls)."""

    def __init__(self, cfg, steps):
        from wml_plugins.losses.wml import WMLLoss

        self.inner, self.steps, self.calls = WMLLoss.from_config(cfg), steps, 0
        self.needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        out = self.inner(logits, labels, omega)
        if not logits[0].requires_grad or omega.requires_grad:   # only the inner step's calls count
            return out
        self.calls += 1
        if self.steps is None or self.calls in self.steps:
            bad = out.per_peer * torch.tensor([1.0, float("nan")], device=out.per_peer.device)
            return LossResult(bad.sum(), bad, out.ce, out.kl)
        return out

    def logit_grads(self, *args, **kwargs):       # the hypergradient's u, so that it never calls the loss
        return self.inner.logit_grads(*args, **kwargs)


def _nan_host(steps):
    class Plugin:
        @hookimpl
        def wml_register_losses(self, register):
            register("nan", lambda cfg: NaNLoss(cfg, steps))

    host = PluginHost()
    host.register(Plugin(), "nan-injector")
    return host


def test_a_nan_in_one_peer_skips_that_peers_update_and_never_reaches_omega(tmp_path, corpus):
    host = _nan_host({2, 3})
    run = WMLTrainer.from_config(tiny_config(corpus, host, loss="nan", max_steps=6, outer_every=1, teacher_steps=4,
                                             blimp="", checkpoint_interval=100), tmp_path / "run", host=host,
                                 log=lambda m: None)
    run.train()
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r["skipped"] for r in train] == [[], [1], [1], [], [], []]
    assert train[1]["loss"][1] is None and train[1]["loss"][0] is not None
    for r in read_metrics(tmp_path / "run"):
        if "omega" in r:
            w = np.array(r["omega"])
            assert np.isfinite(w).all() and (w >= 0).all() and abs(w.sum() - 1) < 1e-12


def test_a_peer_that_keeps_failing_stops_the_run_naming_it_and_keeps_the_checkpoints(tmp_path, corpus):
    host = _nan_host(None)
    trainer = WMLTrainer.from_config(tiny_config(corpus, host, loss="nan", max_steps=8, teacher_steps=4, blimp="",
                                                 checkpoint_interval=2, nonfinite_patience=3), tmp_path / "run",
                                     host=host, log=lambda m: None)
    with pytest.raises(TrainingError, match=r"peer_1 produced a non-finite loss or gradient in 3 consecutive steps \(the last at step 3\)"):
        trainer.train()
    assert checkpoint.load(tmp_path / "run")["step"] == 2     # the last good checkpoint is still there


# ------------------------------------------------------------------ checkpoints

def test_checkpoints_load_without_pickle_and_carry_a_checksum(reference):
    newest = checkpoint.found(reference)[0]
    assert checkpoint.problem(newest) is None
    torch.load(newest.path, weights_only=True)          # would raise for anything but tensors and plain values
    manifest = json.loads(newest.manifest.read_text())
    assert manifest["step"] == SMALL["max_steps"] and len(manifest["sha256"]) == 64


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:50] + b"\x00" * 8 + p.read_bytes()[58:]), "checksum mismatch"),
    (lambda p: p.with_suffix(".json").unlink(), "no manifest"),
])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage, reason):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest, previous = checkpoint.found(run)[:2]
    damage(newest.path)
    warnings = []
    state = checkpoint.load(run, warn=warnings.append)
    assert state["step"] == previous.step
    assert len(warnings) == 1 and reason in warnings[0] and newest.path.name in warnings[0]
    for f in checkpoint.found(run):
        f.path.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["run", "--resume", str(run)])
    assert result.exit_code == 2 and "no usable step checkpoint" in result.output and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("where", ["data", "manifest"])
def test_a_kill_inside_a_checkpoint_write_resumes_to_the_same_result(tmp_path, corpus, reference, where):
    cfg = _cli_config(tmp_path, corpus)
    run = tmp_path / "run"
    env = {**os.environ, checkpoint.KILL_ENV: f"step-4:{where}"}
    cli = [sys.executable, "-m", "wml_framework.cli", "run"]
    killed = subprocess.run([*cli, "--config", str(cfg), "--out", str(run)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    found = {f.step: f for f in checkpoint.found(run)}
    assert set(found) == ({0, 2} if where == "data" else {0, 2, 4})     # step 4: never renamed, or unconfirmed
    assert checkpoint.load(run, warn=lambda m: None)["step"] == 2
    done = subprocess.run([*cli, "--resume", str(run)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert differences(reference, run) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["data", "manifest"])
def test_a_kill_inside_the_teachers_first_checkpoint_starts_the_teacher_over(tmp_path, corpus, reference, where):
    """The teacher writes a checkpoint at step 0, before any training; a kill inside that write leaves no
    whole teacher checkpoint. Would catch: every later ``--resume`` failing on it (a traceback, until
    checkpoint/ is removed by hand), and the teacher's records of the killed start kept twice."""
    cfg, run = _cli_config(tmp_path, corpus), tmp_path / "run"
    cli = [sys.executable, "-m", "wml_framework.cli", "run"]
    killed = subprocess.run([*cli, "--config", str(cfg), "--out", str(run)], capture_output=True, text=True,
                            env={**os.environ, checkpoint.KILL_ENV: f"teacher-0:{where}"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = subprocess.run([*cli, "--resume", str(run)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    if where == "manifest":                 # its bytes whole, never confirmed: found, refused, removed
        assert "the teacher's training starts over" in done.stderr
    records = [json.loads(line) for line in (run / "teacher_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, SMALL["teacher_steps"] + 1))
    assert [r["step"] for r in records if r["kind"] == "eval"].count(0) == 1
    assert differences(reference, run) == []


class EventLog:
    """Writes down every run event of a run, by what places it in the run (name, phase, step, model)."""

    def __init__(self):
        self.places: list[str] = []

    @hookimpl
    def wml_run_event(self, event, payload):
        self.places.append(event_place(event, payload))


def event_place(event: str, payload: dict) -> str:
    """An event as a ``tests/kill_at_event.py`` spec: ``train:step=5``, ``phase:phase=export``."""
    return event + ":" + ",".join(f"{k}={payload[k]}" for k in ("phase", "model", "step") if k in payload)


def draw_kill_events(places: list[str], kills: int, seed: int) -> list[str]:
    """``kills`` events of an uninterrupted run, one from each equal stretch of it, drawn from ``seed``.

    Only events that happen once in the run are drawn, in the order they happen: a run resumed after
    a kill replays everything after its checkpoint, so each next event is met by the next launch."""
    once = [p for p in places if places.count(p) == 1]
    rng = random.Random(seed)
    stretch = len(once) // kills
    return [once[k * stretch + rng.randrange(stretch)] for k in range(kills)]


@pytest.mark.slow
def test_random_sigkills_then_resumes_end_exactly_like_an_uninterrupted_run(tmp_path, corpus):
    """SIGKILL at three run events drawn from a seed (one early, one midway, one late, among the events
    observers hear: the phases, the peers' steps, evaluations and checkpoints, export, evaluation,
    report; the teacher's own steps are killed in ``tests/test_teacher_loop.py``), a resume after each;
    the run then ends exactly as an uninterrupted one: peers, teacher, records and ``eval.json``. Each
    kill is chosen by an event, so it lands at the same point of the run on an idle machine and on a
    loaded one.
    Would catch: a checkpoint that misses any state (RNG, optimizer, ω, early stopping, the teacher's),
    records logged twice or lost, a phase that cannot be resumed."""
    changes = dict(teacher_steps=30, max_steps=12, lr_decay_iters=12)
    log, host = EventLog(), PluginHost()
    host.register(log, "event-log")
    reference = tmp_path / "reference"
    trainer = WMLTrainer.from_config(tiny_config(corpus, host, **SMALL | changes), reference, host=host,
                                     log=lambda m: None)
    trainer.train()
    trainer.evaluate()
    trainer.report()
    targets = draw_kill_events(log.places, kills=3, seed=0)
    assert len(set(targets)) == 3 and log.places.index(targets[0]) < log.places.index(targets[2])
    cfg, run = _cli_config(tmp_path, corpus, **changes), tmp_path / "run"
    for k, target in enumerate(targets):
        launch = ["run", "--config", str(cfg), "--out", str(run)] if k == 0 else ["run", "--resume", str(run)]
        killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_event.py"), target, *launch],
                                capture_output=True, text=True, timeout=600)
        assert killed.returncode == -signal.SIGKILL, (target, killed.stderr[-2000:])
    done = subprocess.run([sys.executable, "-m", "wml_framework.cli", "run", "--resume", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (reference / "eval.json").is_file() and (run / "eval.json").is_file()      # compared too
    assert differences(reference, run) == [], targets


def test_kill_events_are_drawn_once_each_in_run_order():
    places = ["phase:phase=data", "train:step=1", "checkpoint:step=2", "train:step=1", "eval:step=4",
              "phase:phase=export", "phase:phase=report"]
    drawn = draw_kill_events(places, kills=3, seed=1)
    assert "train:step=1" not in drawn                      # met twice: a resume could meet it early
    assert [places.index(d) for d in drawn] == sorted(places.index(d) for d in drawn)
    assert drawn == draw_kill_events(places, kills=3, seed=1)


# ------------------------------------------------------------------ signals

class SignalAt:
    """Sends a signal to its own process at a chosen phase (or training step): deterministic."""

    def __init__(self, signum, phase=None, step=None):
        self.signum, self.phase, self.step, self.sent = signum, phase, step, False

    @hookimpl
    def wml_run_event(self, event, payload):
        hit = (event == "phase" and payload["phase"] == self.phase) or (event == "train" and payload["step"] == self.step)
        if hit and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, phase, step", [
    (signal.SIGTERM, None, 3),
    pytest.param(signal.SIGUSR1, None, 5, marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, None, 1, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, "data", None, marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, "teacher", None, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, "peers", None, marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, "export", None, marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, "evaluation", None, marks=pytest.mark.slow),
    pytest.param(signal.SIGUSR1, "report", None, marks=pytest.mark.slow),
])
def test_a_signal_in_any_phase_exits_with_the_resume_command_and_loses_nothing(
        tmp_path, corpus, reference, monkeypatch, signum, phase, step):
    host = PluginHost()
    host.register(SignalAt(signum, phase, step), "signaller")
    monkeypatch.setattr(plugins, "_HOST", host)
    cfg = _cli_config(tmp_path, corpus)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", str(run)])
    assert result.exit_code == 128 + signum, result.output
    assert f"wml run --resume {run}" in result.output and signal.Signals(signum).name in result.output
    if step is not None:                                   # the step finished and was checkpointed
        assert checkpoint.load(run)["step"] == step
        assert f"stopped after step {step} (checkpoint written)" in result.output
    monkeypatch.setattr(plugins, "_HOST", PluginHost())
    done = CliRunner().invoke(main, ["run", "--resume", str(run)])
    assert done.exit_code == 0, done.output
    assert differences(reference, run) == []


def test_a_resume_keeps_the_early_stopping_state(tmp_path, corpus):
    """Would catch: a resume that forgets how many evaluations failed to improve (the stop would
    then come later than in the uninterrupted run)."""
    from wml_framework.runtime.interrupts import Interrupted

    stalled = dict(enable_early_stopping=True, early_stopping_patience=2, eval_interval=2, learning_rate=1e-9,
                   min_lr=1e-9, omega_lr=0.0, omega_min_lr=0.0, max_steps=12, lr_decay_iters=12, teacher_steps=2)
    cfg = tiny_config(corpus, **SMALL | stalled)
    whole = tmp_path / "whole"
    summary = WMLTrainer.from_config(cfg, whole, log=lambda m: None).train()
    assert summary["stopped_early"] and summary["steps"] < 12
    host = PluginHost()
    host.register(SignalAt(signal.SIGTERM, step=summary["steps"] - 1), "signaller")  # after a failed evaluation
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        WMLTrainer.from_config(cfg, run, host=host, log=lambda m: None).train()
    WMLTrainer.from_run_dir(run, log=lambda m: None).train()
    assert differences(whole, run) == []


@pytest.mark.slow
def test_sigterm_to_a_real_process_checkpoints_and_exits_143(tmp_path, corpus):
    """SIGTERM (what a scheduler sends) arrives during step 3 of a real ``wml run`` process, between
    two periodic checkpoints. Would catch: a signal that kills the process mid-step, a stop that loses
    the steps since the last checkpoint, an exit code a scheduler would not read as "terminated"."""
    cfg = _cli_config(tmp_path, corpus, checkpoint_interval=1000)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_event.py"), "SIGTERM@train:step=3",
                           "run", "--config", str(cfg), "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stderr[-2000:]
    steps = [r["step"] for r in read_metrics(run) if r["kind"] == "train"]
    assert checkpoint.load(run)["step"] == steps[-1] == 3          # nothing since the last step is lost
    assert f"wml run --resume {run}" in proc.stderr


# ------------------------------------------------------------------ bad input: one line, non-zero exit, no partial output

def _one_line_error(result, code=2):
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == code, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture(scope="module")
def saved_teacher(reference):
    return reference / "teacher"


def test_a_teacher_whose_weights_do_not_match_its_config_is_refused(tmp_path, saved_teacher, corpus):
    import shutil

    from safetensors.torch import load_file, save_file

    missing = tmp_path / "missing"
    shutil.copytree(saved_teacher, missing)
    tensors = load_file(missing / "model.safetensors")
    tensors.pop(next(k for k in tensors if "layers.1" in k))
    save_file(tensors, missing / "model.safetensors", metadata={"format": "pt"})
    line = _one_line_error(CliRunner().invoke(main, ["run", "--teacher", str(missing), "--corpus", str(corpus),
                                                     "--out", str(tmp_path / "r1")]))
    assert "do not match its config.json (missing keys" in line and not (tmp_path / "r1").exists()
    wrong = tmp_path / "wrong"
    shutil.copytree(saved_teacher, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (wrong / "config.json").write_text(json.dumps(cfg))
    line = _one_line_error(CliRunner().invoke(main, ["run", "--teacher", str(wrong), "--corpus", str(corpus),
                                                     "--out", str(tmp_path / "r2")]))
    assert "tensor shapes differ" in line and not (tmp_path / "r2").exists()


def test_a_tokenizer_larger_than_the_teachers_embedding_is_refused(tmp_path, saved_teacher, corpus):
    import shutil

    t = tmp_path / "t"
    shutil.copytree(saved_teacher, t)
    cfg = json.loads((t / "config.json").read_text())
    cfg["vocab_size"] = 100
    (t / "config.json").write_text(json.dumps(cfg))
    line = _one_line_error(CliRunner().invoke(main, ["run", "--teacher", str(t), "--corpus", str(corpus),
                                                     "--out", str(tmp_path / "r")]))
    assert "tokenizer has" in line and "embedding only 100 rows" in line and not (tmp_path / "r").exists()


def test_resume_of_a_folder_that_is_not_a_run_or_is_from_another_config_version(tmp_path):
    (tmp_path / "plain").mkdir()
    assert "is not a run folder" in _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(tmp_path / "plain")]))
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text('learning_rat = 0.1\n')
    line = _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(old)]))
    assert "cannot be resumed with the installed wml and plugins" in line and "'learning_rate'" in line


@pytest.mark.parametrize("removed, needle", [("checkpoint", "no checkpoint/"), ("teacher", "no teacher/ folder")])
def test_resume_of_a_run_with_files_removed_is_refused(tmp_path, reference, removed, needle):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / removed)
    assert needle in _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(run)]))


def test_resume_may_extend_a_run_but_not_change_a_shape(tmp_path, reference):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    line = _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(run), "--set", "block_size=64"]))
    assert "'block_size' cannot change when a run resumes" in line and "max_steps" in line
    longer = CliRunner().invoke(main, ["run", "--resume", str(run), "--set", "max_steps=10", "--set", "lr_decay_iters=10"])
    assert longer.exit_code == 0, longer.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 10
    assert "max_steps = 10" in (run / "config.toml").read_text()


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_complete_looking_output(tmp_path, corpus, monkeypatch):
    import errno

    from wml_framework.runtime import atomic

    real = atomic.os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith(".pt") and "checkpoint" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", full)
    cfg = _cli_config(tmp_path, corpus)
    line = _one_line_error(CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", str(tmp_path / "run")]), 1)
    assert "No space left on device" in line and "can be resumed" in line
    assert not (tmp_path / "run" / "summary.json").exists() and not checkpoint.found(tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoint").glob("*.tmp")) if (tmp_path / "run" / "checkpoint").exists() else True


def test_an_output_folder_that_cannot_be_written_is_refused_before_work(tmp_path, corpus):
    target = Path("/sys/fs/wml-test-run")           # read-only even for root, unlike a chmod-ed folder
    if not Path("/sys/fs").is_dir():
        pytest.skip("no /sys/fs on this system")
    line = _one_line_error(CliRunner().invoke(main, ["run", "--corpus", str(corpus), "--out", str(target)]))
    assert "cannot write to '/sys/fs'" in line and not target.exists()


@pytest.mark.slow
def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, reference):
    import shutil

    from wml_framework.runtime.run_lock import locked

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with locked(run):
        other = subprocess.run([sys.executable, "-m", "wml_framework.cli", "run", "--resume", str(run)],
                               capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "in use by another wml process" in other.stderr and "Traceback" not in other.stderr
    assert f"pid {os.getpid()}" in other.stderr

