"""``wml run`` end to end on a tiny generated corpus: the folder it writes, resume, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from run_helpers import TINY, tiny_config
from run_helpers import read_metrics as _read_metrics

from wml_framework import hookimpl, runner
from wml_framework.cli import main
from wml_framework.plugin_system.host import PluginHost


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "bayes-mirror"
    runner.start(tiny_config(corpus), run_dir, log=lambda m: None)
    return run_dir


def test_run_folder_has_everything(finished_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = finished_run
    for name in ("config.toml", "metrics.jsonl", "summary.json", "init_table.json", "init_trace.json",
                 "teacher/config.json", "champion/config.json"):
        assert (d / name).exists(), name
    kept = sorted(p.name for p in (d / "checkpoint").iterdir())   # the newest two, each with its manifest
    assert kept == ["step-00000008.json", "step-00000008.pt", "step-00000012.json", "step-00000012.pt"]
    summary = json.loads((d / "summary.json").read_text())
    assert len(summary["peers"]) == 2 and summary["steps"] == TINY["max_steps"]
    for peer in summary["peers"]:
        model = AutoModelForCausalLM.from_pretrained(d / "peers" / peer["name"])
        tok = AutoTokenizer.from_pretrained(d / "peers" / peer["name"])
        assert sum(p.numel() for p in model.parameters()) == peer["parameters"]
        ids = tok("the cat", return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids.shape[1]


def test_every_exported_folder_is_written_for_transformers_4(finished_run):
    """Catches: a folder of the run (the teacher, a peer, the champion) saved another way than ``save_model``,
    without the keys the BabyLM pipeline's transformers 4.51.3 needs (tests/test_transformers4_export.py)."""
    for folder in ("teacher", "champion", "peers/peer_0", "peers/peer_1"):
        config = json.loads((finished_run / folder / "config.json").read_text())
        tok = json.loads((finished_run / folder / "tokenizer_config.json").read_text())
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"], folder
        assert config["torch_dtype"] == config["dtype"], folder
        assert tok["tokenizer_class"] == "PreTrainedTokenizerFast" and tok["add_prefix_space"] is True, folder


def test_metrics_log_each_term_separately(finished_run):
    records = _read_metrics(finished_run)
    train = [r for r in records if r["kind"] == "train"]
    outer = [r for r in records if r["kind"] == "outer"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, TINY["max_steps"] + 1))
    assert len(outer) == TINY["max_steps"] // TINY["outer_every"]
    for r in train:
        assert len(r["ce"]) == len(r["kl"]) == len(r["omega"]) == 2 and r["tokens_per_s"] > 0
        assert abs(sum(r["omega"]) - 1) < 1e-9
    assert all(len(r["grad"]) == 2 and r["info"]["hypergradient"] == "exact" for r in outer)
    assert all(isinstance(r["val_loss"], float) for r in outer)   # the ω-batch loss the report plots
    assert evals[0]["step"] == 0 and evals[-1]["step"] == TINY["max_steps"]
    assert evals[-1]["ensemble_val_loss"] < evals[0]["ensemble_val_loss"]
    moved = max(abs(w - 0.5) for w in outer[-1]["omega"])
    assert moved > 1e-3, f"mirror descent moved ω by only {moved:.2e} (float noise is ~1e-16)"


@pytest.mark.slow
def test_resume_after_an_interruption_is_bit_identical(tmp_path, corpus, finished_run):
    """Kill a run between checkpoints, resume it, and get exactly the uninterrupted result."""

    class Interrupt:
        @hookimpl
        def wml_run_event(self, event, payload):
            if event == "train" and payload["step"] == 7:
                raise KeyboardInterrupt

    cfg = tiny_config(corpus)
    run_dir = tmp_path / "interrupted"
    host = PluginHost()
    host.register(Interrupt(), "interrupt-at-7")
    with pytest.raises(KeyboardInterrupt):
        runner.start(cfg, run_dir, log=lambda m: None, host=host)
    assert not (run_dir / "summary.json").exists()
    runner.resume(run_dir, log=lambda m: None)
    for i in range(2):
        from safetensors.torch import load_file

        a = load_file(finished_run / "peers" / f"peer_{i}" / "model.safetensors")
        b = load_file(run_dir / "peers" / f"peer_{i}" / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "threads")} for r in rs]  # noqa: E731
    assert strip(_read_metrics(run_dir)) == strip(_read_metrics(finished_run))


@pytest.mark.parametrize("changes", [
    pytest.param({"init": "l1"}, marks=pytest.mark.slow),
    pytest.param({"init": "l1", "prune_importance": "taylor"}, marks=pytest.mark.slow),
    pytest.param({"updater": "uniform"}, marks=pytest.mark.slow),
    pytest.param({"loss": "kd"}, marks=pytest.mark.slow),
])
def test_other_plugins_run(tmp_path, corpus, changes):
    run_dir = tmp_path / "run"
    runner.start(tiny_config(corpus, max_steps=4, blimp="", **changes), run_dir, log=lambda m: None)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"][next(iter(changes))] == next(iter(changes.values()))
    if changes.get("updater") == "uniform":
        assert summary["omega"] == [0.5, 0.5]


def test_existing_run_folder_is_not_overwritten(finished_run, corpus):
    result = CliRunner().invoke(main, ["run", "--corpus", str(corpus), "--out", str(finished_run)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_teacher_that_is_not_a_model_fails_before_work(tmp_path):
    result = CliRunner().invoke(main, ["run", "--teacher", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "config.json" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_whole_cli_in_a_subprocess(tmp_path, corpus):
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items()))
    run_dir = tmp_path / "cli-run"
    env = {**os.environ, "WML_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "wml_framework.cli", "run", "--init", "bayes", "--updater", "mirror",
         "--config", str(cfg_file), "--corpus", str(corpus), "--out", str(run_dir)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith(str(run_dir))
    assert "ensemble held-out next-token loss is" in proc.stderr
    assert (run_dir / "summary.json").exists() and (run_dir / "report.md").exists()


def test_a_given_teacher_and_its_tokenizer_are_used(tmp_path, corpus, finished_run):
    teacher_dir = finished_run / "teacher"
    run_dir = tmp_path / "given"
    runner.start(tiny_config(corpus, teacher=str(teacher_dir), max_steps=2, blimp=""), run_dir, log=lambda m: None)
    from transformers import AutoTokenizer

    given = AutoTokenizer.from_pretrained(teacher_dir)
    peer_tok = AutoTokenizer.from_pretrained(run_dir / "peers" / "peer_0")
    assert given.get_vocab() == peer_tok.get_vocab()
    summary = json.loads((run_dir / "summary.json").read_text())
    original = json.loads((finished_run / "summary.json").read_text())
    assert summary["teacher"]["parameters"] == original["teacher"]["parameters"]
    assert summary["teacher"]["val_loss"] == pytest.approx(original["teacher"]["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path, corpus):
    run_dir = tmp_path / "stalled"
    cfg = tiny_config(corpus, max_steps=40, eval_interval=2, enable_early_stopping=True, early_stopping_patience=2,
                      learning_rate=1e-9, min_lr=1e-9, omega_lr=0.0, omega_min_lr=0.0, blimp="")
    runner.start(cfg, run_dir, log=lambda m: None)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] < 40


@pytest.mark.slow
def test_ctrl_c_then_resume_from_the_command_line(tmp_path, corpus):
    """A real interrupt (SIGINT, as Ctrl-C sends) during step 10: exit 130 with the resume hint, then
    --resume finishes it. The moment is an event of the run (its 10th step), not a time."""
    cfg_file = tmp_path / "tiny.toml"
    values = {**TINY, "max_steps": 24, "lr_decay_iters": 24, "blimp": ""}
    cfg_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    run_dir = tmp_path / "sigint"
    env = {**os.environ, "WML_CACHE_DIR": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "wml_framework.cli", "run"]
    killer = [sys.executable, str(Path(__file__).parent / "kill_at_event.py"), "SIGINT@train:step=10", "run"]
    proc = subprocess.run([*killer, "--config", str(cfg_file), "--corpus", str(corpus), "--out", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=600)
    err = proc.stderr
    assert proc.returncode == 130, err[-2000:]
    assert f"wml run --resume {run_dir}" in err
    assert not (run_dir / "summary.json").exists()
    done = subprocess.run([*base, "--resume", str(run_dir)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed at step" in done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24
    steps = [r["step"] for r in _read_metrics(run_dir) if r["kind"] == "train"]
    assert steps == list(range(1, 25)), "every step logged exactly once across the interruption"


@pytest.mark.slow
def test_resume_before_the_first_periodic_checkpoint_logs_each_record_once(tmp_path, corpus):
    class Interrupt:
        @hookimpl
        def wml_run_event(self, event, payload):
            if event == "train" and payload["step"] == 2:
                raise KeyboardInterrupt

    run_dir = tmp_path / "early"
    host = PluginHost()
    host.register(Interrupt(), "interrupt-at-2")
    with pytest.raises(KeyboardInterrupt):
        runner.start(tiny_config(corpus, max_steps=4, blimp=""), run_dir, log=lambda m: None, host=host)
    runner.resume(run_dir, log=lambda m: None)
    records = _read_metrics(run_dir)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 4]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]


def test_block_size_beyond_a_given_teachers_context_is_refused(tmp_path, corpus, finished_run):
    result = CliRunner().invoke(main, ["run", "--teacher", str(finished_run / "teacher"), "--corpus", str(corpus),
                                       "--set", "block_size=1024", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "block_size" in result.output and "256" in result.output


def test_progress_lines_without_a_terminal(finished_run, capsys):
    """Would catch: the progress observer listening for an event the trainer no longer sends (it
    listened for 'step' after the trainer's event became 'train', and printed nothing)."""
    from wml_framework.api import Event

    host = PluginHost()           # the built-in progress observer is one of its plugins
    records = _read_metrics(finished_run)
    host.emit(Event.PHASE, {"phase": "training"})
    host.emit(Event.RUN_START, {"step": 0, "total_steps": TINY["max_steps"], "num_peers": 2})
    for r in records:
        host.emit(Event(r["kind"]), r)
    err = capsys.readouterr().err
    assert f"step {TINY['max_steps']}/{TINY['max_steps']}" in err and "step 1/" in err
    assert "phase: training" in err and f"eval @ {TINY['max_steps']}" in err


def test_a_run_too_short_for_an_outer_step_says_so_before_any_work(tmp_path, corpus):
    """Would catch: a mirror run whose ω silently never moves (max_steps below outer_every)."""
    from wml_framework.runner import WMLTrainer

    for steps, warned in ((3, True), (5, False)):
        lines = []
        cfg = tiny_config(corpus, max_steps=steps, lr_decay_iters=steps, outer_every=5)
        WMLTrainer.from_config(cfg, tmp_path / f"run{steps}", log=lines.append).prepare()
        assert any("will not move ω" in line for line in lines) == warned


def test_a_run_plans_its_corpus_once(tmp_path, corpus, finished_run, monkeypatch):
    """The run's checks list and check every corpus file; the data stage uses that plan.

    Would catch: the data stage planning the corpus again (every file of a BabyLM folder listed
    and probed twice, and a file changed in between read under a plan that was not checked)."""
    from wml_framework.text import corpus as corpus_module
    from wml_framework.text import tokens

    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return corpus_module.plan_corpus(*args, **kwargs)

    monkeypatch.setattr(runner, "plan_corpus", counting)
    monkeypatch.setattr(tokens, "plan_corpus", counting)
    cfg = tiny_config(corpus, teacher=str(finished_run / "teacher"), blimp="")
    runner.WMLTrainer.from_config(cfg, tmp_path / "run", log=lambda m: None).train_teacher_only()
    assert calls == [(str(corpus), "")]


def test_summary_holds_the_trained_and_the_fitted_ensemble(finished_run, capsys):
    """Catches: the fitted ω missing from summary.json, a fit worse than the best peer or than the
    trained ω on the ω half, `wml eval`'s run reader not taking the fitted ω by default (or not
    giving the trained one when asked), and a printed summary that shows one ensemble only."""
    from wml_framework.evaluation.run_reader import load_run
    from wml_framework.training.export import print_summary

    summary = json.loads((finished_run / "summary.json").read_text())
    fit = summary["omega_fit"]
    assert len(summary["fitted_omega"]) == len(summary["omega"]) == 2
    assert summary["fitted_ensemble_omega_half_loss"] <= min(fit["peer_losses"]) + 1e-9
    assert summary["fitted_ensemble_omega_half_loss"] <= summary["ensemble_omega_half_loss"] + 1e-9
    assert isinstance(summary["fitted_ensemble_val_loss"], float) and fit["blocks"] > 0
    fitted, trained = load_run(finished_run, load_teacher=False), load_run(finished_run, load_teacher=False, omega="trained")
    assert np.allclose(fitted.omega, summary["fitted_omega"]) and "fitted" in fitted.omega_source
    assert np.allclose(trained.omega, summary["omega"]) and trained.omega_source == "summary.json"
    lines = []
    print_summary(summary, lines.append)
    assert any("(trained ω)" in line for line in lines) and any("(fitted ω)" in line for line in lines)
