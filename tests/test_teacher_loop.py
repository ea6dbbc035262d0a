"""The teacher is trained by the peers' training loop: the same AdamW groups, NaN guard, checkpoints,
resume and records, with its own settings (steps, schedule, checkpoint kind, records file).

Would catch: a teacher AdamW that decays biases and norms again (a second optimizer recipe); a
teacher schedule that drifted from ``teacher_steps``/``teacher_learning_rate``; a NaN teacher that
trains on silently or is reported as a peer; teacher records that land in the peers'
``metrics.jsonl`` or reach run observers as peer steps; callbacks that get no state (or ``None`` at
phases); a killed teacher that does not resume bit for bit (a lost RNG, optimizer or generator state,
records logged twice or cut at the wrong step).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_models import build, tiny_llama_config
from run_helpers import read_metrics, tiny_config

from wml_framework import config as cfgmod
from wml_framework import hookimpl
from wml_framework.plugin_system.host import PluginHost
from wml_framework.runner import WMLTrainer
from wml_framework.runtime import checkpoint
from wml_framework.text.tokens import TokenData
from wml_framework.training.callbacks import TrainerState
from wml_framework.training.loop import TrainingError
from wml_framework.training.schedules import warmup_cosine
from wml_framework.training.teacher import teacher_loop, train_teacher

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from kill_resume import differences  # noqa: E402

WALL_CLOCK = ("tokens_per_s", "threads")


def _teacher_setup(tmp_path, **changes):
    """A tiny LLaMA teacher, random token data and a config of ``changes``."""
    cfg = cfgmod.from_dict({"device": "cpu", "batch_size": 4, "block_size": 16, "vocab_size": 300, "threads": "1",
                            "eval_batches": 2, "teacher_steps": 6, "checkpoint_interval": 2, **changes})
    rng = np.random.default_rng(0)
    data = TokenData(rng.integers(3, 128, 5000).astype(np.uint16), rng.integers(3, 128, 2000).astype(np.uint16),
                     None, 128)
    return cfg, data, build(tiny_llama_config(hidden=32, n_head=2), seed=0).train()


def test_the_teachers_adamw_spares_biases_and_norms_as_the_peers_does(tmp_path):
    cfg, data, model = _teacher_setup(tmp_path)
    loop = teacher_loop(model, data, cfg, torch.device("cpu"), host=PluginHost(), run_dir=tmp_path, log=lambda m: None)
    (opt,) = loop.optimizers
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    matrices = {id(p) for p in model.parameters() if p.dim() >= 2}
    vectors = {id(p) for p in model.parameters() if p.dim() < 2}
    assert vectors, "the tiny LLaMA has norm weights"
    assert by_decay == {cfg.weight_decay: matrices, 0.0: vectors}


def test_the_teacher_keeps_its_own_steps_schedule_and_outputs(tmp_path):
    cfg, data, model = _teacher_setup(tmp_path, teacher_steps=50, warmup_iters=20, teacher_learning_rate=2e-3)
    loop = teacher_loop(model, data, cfg, torch.device("cpu"), host=PluginHost(), run_dir=tmp_path, log=lambda m: None)
    s = loop.settings
    assert (s.model, s.max_steps, s.checkpoint_kind, s.early_stopping) == ("teacher", 50, checkpoint.TEACHER, False)
    assert loop.records == tmp_path / "teacher_metrics.jsonl"
    expected = [warmup_cosine(k, 2e-3, 2e-4, 5, 50) for k in range(50)]      # warm-up min(20, 50 // 10)
    assert [loop.lr(k) for k in range(50)] == expected


def test_a_nan_teacher_is_stopped_by_the_peers_guard_naming_the_teacher(tmp_path):
    cfg, data, model = _teacher_setup(tmp_path, nonfinite_patience=2)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")             # every logit row, so every loss, is NaN
    with pytest.raises(TrainingError, match=r"^teacher produced a non-finite loss or gradient in 2 consecutive "
                                            r"steps \(the last at step 2\).*lower teacher_learning_rate"):
        train_teacher(model, data, cfg, torch.device("cpu"), host=PluginHost(), run_dir=tmp_path, log=lambda m: None)
    train = [json.loads(line) for line in (tmp_path / "teacher_metrics.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert [r["skipped"] for r in train] == [[0]] and train[0]["loss"] == [None]   # step 1 skipped, not applied
    assert checkpoint.load(tmp_path, checkpoint.TEACHER)["step"] == 0              # the checkpoint before it stays
    assert not checkpoint.exists(tmp_path)                                           # and no peers' checkpoint


def test_a_teacher_checkpoint_of_the_earlier_loop_restarts_the_teacher_with_a_warning(tmp_path):
    cfg, data, model = _teacher_setup(tmp_path)
    fresh = build(tiny_llama_config(hidden=32, n_head=2), seed=0).train()
    train_teacher(fresh, data, cfg, torch.device("cpu"), host=PluginHost(), run_dir=tmp_path / "fresh", log=lambda m: None)
    checkpoint.save(tmp_path / "old", {"step": 4, "model": model.state_dict(), "gen": torch.Generator().get_state()},
                    kind=checkpoint.TEACHER)                 # the keys the teacher's own loop wrote
    lines = []
    train_teacher(model, data, cfg, torch.device("cpu"), host=PluginHost(), run_dir=tmp_path / "old", log=lines.append)
    assert any("earlier wml" in line and "starts over" in line for line in lines)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


class Heard:
    """A run observer and a callback at once: what each hears, and the state callbacks get."""

    def __init__(self):
        self.observed, self.called = [], []

    @hookimpl
    def wml_run_event(self, event, payload):
        self.observed.append((event, payload.get("step")))

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda payload, state, control: self.called.append((name[3:], state))


def test_teacher_records_have_their_own_file_and_observers_hear_only_the_peers(tmp_path, corpus):
    heard, host = Heard(), PluginHost()
    host.register(heard, "heard")
    cfg = tiny_config(corpus, host, teacher_steps=8, max_steps=4, lr_decay_iters=4, blimp="")
    WMLTrainer.from_config(cfg, tmp_path / "run", host=host, callbacks=[heard], log=lambda m: None).train()
    teacher = [json.loads(line) for line in (tmp_path / "run" / "teacher_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in teacher if r["kind"] == "train"] == list(range(1, 9))
    assert all(r["omega"] == [1.0] for r in teacher if r["kind"] == "train")
    peers = read_metrics(tmp_path / "run")
    assert [r["step"] for r in peers if r["kind"] == "train"] == list(range(1, 5))
    assert all(len(r["omega"]) == 2 for r in peers if "omega" in r)
    assert [s for e, s in heard.observed if e == "train"] == list(range(1, 5))         # no teacher step
    assert all(isinstance(state, TrainerState) for _, state in heard.called)            # phases included
    phases = {state.phase: state.model for event, state in heard.called if event == "phase"}
    assert phases == {"data": "", "teacher": "teacher", "peers": "peers", "training": "peers", "export": "peers"}
    trained = [(state.model, state.phase, state.step) for event, state in heard.called if event == "train"]
    assert trained == [("teacher", "teacher", k) for k in range(1, 9)] + [("peers", "training", k) for k in range(1, 5)]
    assert not checkpoint.exists(tmp_path / "run", checkpoint.TEACHER)   # removed once the teacher folder is saved


class SignalAtTeacherStep:
    """A callback that sends SIGTERM to its own process after the teacher's step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train(self, record, state, control):
        if state.model == "teacher" and state.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_in_the_teachers_training_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, corpus):
    from safetensors.torch import load_file

    from wml_framework.runtime.interrupts import Interrupted

    cfg = tiny_config(corpus, teacher_steps=8, checkpoint_interval=100, blimp="", threads="1")
    reference, run = tmp_path / "reference", tmp_path / "run"
    WMLTrainer.from_config(cfg, reference, log=lambda m: None).train_teacher_only()
    with pytest.raises(Interrupted) as stopped:
        WMLTrainer.from_config(cfg, run, callbacks=[SignalAtTeacherStep(3)], log=lambda m: None).train_teacher_only()
    assert stopped.value.step == 3 and checkpoint.load(run, checkpoint.TEACHER)["step"] == 3
    WMLTrainer.from_run_dir(run, log=lambda m: None).train_teacher_only()
    ta, tb = (load_file(d / "teacher" / "model.safetensors") for d in (reference, run))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _records(run / "teacher_metrics.jsonl") == _records(reference / "teacher_metrics.jsonl")


# ------------------------------------------------------------------ a killed teacher resumes bit for bit

KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from run_helpers import tiny_config
from wml_framework.runner import WMLTrainer

event, step, run = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])


class KillAtTeacherEvent:
    '''SIGKILLs this process at the teacher's event: no cleanup runs, as when power is lost.'''

    def __getattr__(self, name):
        if name != "on_" + event:
            raise AttributeError(name)
        return self.kill

    def kill(self, payload, state, control):
        if state.model == "teacher" and state.step == step:
            os.kill(os.getpid(), signal.SIGKILL)


callbacks = [] if event == "none" else [KillAtTeacherEvent()]
if (run / "config.toml").exists():
    WMLTrainer.from_run_dir(run, callbacks=callbacks).train()
else:
    WMLTrainer.from_config(tiny_config(Path(sys.argv[4]), **{changes!r}), run, callbacks=callbacks).train()
"""
KILL_RUN = dict(teacher_steps=16, checkpoint_interval=4, max_steps=4, lr_decay_iters=4, blimp="", threads="1")


def _launch(event: str, step: int, run: Path, corpus: Path) -> subprocess.CompletedProcess:
    code = KILLER.format(tests=str(ROOT / "tests"), changes=KILL_RUN)
    return subprocess.run([sys.executable, "-c", code, event, str(step), str(run), str(corpus)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_teacher_killed_twice_resumes_to_the_uninterrupted_teacher_bit_for_bit(tmp_path, corpus):
    from safetensors.torch import load_file

    reference, run = tmp_path / "reference", tmp_path / "run"
    WMLTrainer.from_config(tiny_config(corpus, **KILL_RUN), reference, log=lambda m: None).train()
    # killed two steps after the checkpoint of step 4 (the records of steps 5 and 6 must be cut) ...
    first = _launch("train", 6, run, corpus)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert checkpoint.load(run, checkpoint.TEACHER)["step"] == 4 and not (run / "teacher").exists()
    # ... then, resumed, killed right after the checkpoint of step 12 is written
    second = _launch("checkpoint", 12, run, corpus)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "teacher: resumed at step 4/16" in second.stdout
    done = _launch("none", 0, run, corpus)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "teacher: resumed at step 12/16" in done.stdout
    ta, tb = (load_file(d / "teacher" / "model.safetensors") for d in (reference, run))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _records(run / "teacher_metrics.jsonl") == _records(reference / "teacher_metrics.jsonl")
    assert differences(reference, run) == []            # and the peers' run after it, metrics.jsonl included
