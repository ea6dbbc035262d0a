"""``wml eval`` on a synthetic run folder and on a single model folder, in process and as a subprocess."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from eval_synthetic import (
    synthetic_pairs,
    synthetic_sentences,
    write_minimal_pairs,
    write_synthetic_run,
)

from wml_framework import hookimpl
from wml_framework.cli import main
from wml_framework.evaluation import minimal_pairs, models
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import PluginHost
from wml_framework.text import tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    info = write_synthetic_run(root / "run", num_peers=3, steps=20)
    text = "\n\n".join(" ".join(synthetic_sentences(6, seed=k)) for k in range(1500))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    return {"root": root, "run": root / "run", "corpus": root / "corpus.txt", "cache": root / "cache", **info}


@pytest.fixture(autouse=True)
def cache(workspace, monkeypatch):
    monkeypatch.setenv("WML_CACHE_DIR", str(workspace["cache"]))


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_eval_run_folder_scores_peers_ensemble_and_teacher(workspace):
    run = workspace["run"]
    result = run_cli("eval", run, "--corpus", workspace["corpus"], "--limit", 5, "--set", "perplexity.max_blocks=3", "--block-size", 16)
    assert result.exit_code == 0, result.output
    out = json.loads((run / "eval.json").read_text())
    assert list(out["models"]) == ["peer_0", "peer_1", "peer_2", "ensemble", "teacher"]
    assert out["kind"] == "run" and out["omega_source"] == "summary.json"
    assert out["minimal_pairs"]["pairs"] == 8 * 5 and out["minimal_pairs"]["malformed"] == []
    for name, m in out["models"].items():
        assert m["minimal_pairs"]["pairs"] == 40 and len(m["minimal_pairs"]["uids"]) == 8
        assert (m["perplexity"]["blocks"], m["perplexity"]["tokens"]) == (3, 48)
        assert m["perplexity"]["ppl"] == pytest.approx(math.exp(m["perplexity"]["loss"]))
    assert out["models"]["ensemble"]["members"] == ["peer_0", "peer_1", "peer_2"]
    assert [out["models"][n]["omega"] for n in ("peer_0", "peer_1", "peer_2")] == pytest.approx(out["omega"])
    assert out["models"]["peer_1"]["parameters"] == workspace["parameters"][1]
    # the command's numbers are the scorer's numbers
    teacher = models.load_model(run / "teacher")
    direct = minimal_pairs.score_minimal_pairs(teacher, tokenizer.load_tokenizer(run / "teacher"),
                                         out["minimal_pairs"]["source"], limit=5)
    assert out["models"]["teacher"]["minimal_pairs"]["correct"] == direct["correct"]
    # terminal table: every model, the champion starred, and per-paradigm accuracy
    for name in out["models"]:
        assert name in result.stdout
    assert f"{workspace['champion']} ★" in result.stdout and "per paradigm" in result.stdout
    assert "wrote" in result.stderr


def test_eval_model_folder_reports_malformed_lines(workspace, tmp_path):
    blimp = write_minimal_pairs(tmp_path / "pairs", {"agreement": synthetic_pairs(6, seed=1, uid="agreement")})
    lines = (blimp / "agreement.jsonl").read_text().splitlines()
    lines.insert(2, '{"sentence_good": "Alice sees a door.", "sentence_bad": ')  # line 3
    (blimp / "agreement.jsonl").write_text("\n".join(lines) + "\n")
    target = tmp_path / "out" / "scores.json"
    result = run_cli("eval", workspace["run"] / "peers" / "peer_1", "--blimp", blimp, "--corpus", "none",
                     "--json-out", target, "--set", "minimal_pairs.batch_size=4")
    assert result.exit_code == 0, result.output
    assert f"{blimp / 'agreement.jsonl'}:3: malformed" in result.stderr
    out = json.loads(target.read_text())
    assert out["kind"] == "model" and list(out["models"]) == ["peer_1"]
    assert out["minimal_pairs"]["malformed"] == [{"file": str(blimp / "agreement.jsonl"), "line": 3,
                                                  "reason": out["minimal_pairs"]["malformed"][0]["reason"]}]
    assert "not valid JSON" in out["minimal_pairs"]["malformed"][0]["reason"]
    model = out["models"]["peer_1"]
    assert model["minimal_pairs"]["pairs"] == 6 and "perplexity" not in model
    assert out["settings"]["evaluators"] == ["minimal_pairs"] and out["settings"]["options"]["minimal_pairs"] == {
        "batch_size": 4, "predictions_dir": "", "scoring": "auto", "babylm_format": 2025, "revision": "main"}


def test_eval_errors_are_clear(workspace, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("eval", empty)
    assert result.exit_code == 2 and "neither a run folder" in result.output
    result = run_cli("eval", workspace["run"], "--evaluator", "nope")
    assert result.exit_code == 2 and "unknown evaluator 'nope'" in result.output and "minimal_pairs" in result.output
    result = run_cli("eval", workspace["run"], "--blimp", empty, "--corpus", "none")
    assert result.exit_code == 2 and "no .jsonl files" in result.output and "plugin 'evaluators'" in result.output


class CountingEvaluatorPlugin:
    """A third-party evaluator, registered the way an installed package's plugin would be."""

    @hookimpl
    def wml_register_evaluators(self, register):
        def make(cfg, **_options):
            return lambda model, tokenizer, **_kw: {"vocab": len(tokenizer), "corpus": cfg.corpus}

        register("vocab_size", make, help="Vocabulary size (test plugin).")


def test_third_party_evaluator_runs_through_wml_eval(workspace, tmp_path, monkeypatch):
    host = PluginHost()               # a fresh host for this test, installed as the command line's
    monkeypatch.setattr(plugins, "_HOST", host)
    assert {"perplexity", "minimal_pairs"} <= set(host.names("evaluator"))
    host.register(CountingEvaluatorPlugin(), "counting-test")
    target = tmp_path / "e.json"
    result = run_cli("eval", workspace["run"] / "champion", "--evaluator", "vocab_size", "--json-out", target)
    assert result.exit_code == 0, result.output
    out = json.loads(target.read_text())
    assert out["settings"]["evaluators"] == ["vocab_size"]
    assert out["models"]["champion"]["vocab_size"] == {"vocab": len(workspace["tokenizer"]), "corpus": "default"}


def test_an_evaluator_run_alone_adds_to_eval_json_and_drops_nothing(workspace, tmp_path, monkeypatch):
    """``wml eval RUN --evaluator X`` after a full evaluation keeps every other evaluator's results.
    Would catch: eval.json replaced by the last evaluation (the run's perplexity and minimal pairs
    lost), results of an evaluator that was run again kept stale, a model scored only before dropped."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(workspace["run"], run)
    full = run_cli("eval", run, "--corpus", workspace["corpus"], "--limit", 3, "--set", "perplexity.max_blocks=2",
                   "--block-size", 16)
    assert full.exit_code == 0, full.output
    before = json.loads((run / "eval.json").read_text())
    host = PluginHost()
    monkeypatch.setattr(plugins, "_HOST", host)
    host.register(CountingEvaluatorPlugin(), "counting-test")
    alone = run_cli("eval", run, "--evaluator", "vocab_size")
    assert alone.exit_code == 0, alone.output
    after = json.loads((run / "eval.json").read_text())
    assert after["settings"]["evaluators"] == ["minimal_pairs", "perplexity", "vocab_size"]
    for name, model in before["models"].items():
        assert after["models"][name]["perplexity"] == model["perplexity"]
        assert after["models"][name]["minimal_pairs"] == model["minimal_pairs"]
        assert after["models"][name]["vocab_size"]["vocab"] == len(workspace["tokenizer"])
        assert set(after["models"][name]["seconds"]) == {"perplexity", "minimal_pairs", "vocab_size"}
    assert after["minimal_pairs"] == before["minimal_pairs"]            # the evaluator's summary section too
    made = after["settings"]["by_evaluator"]
    assert made["perplexity"]["created"] == before["created"]
    assert made["perplexity"]["options"]["max_blocks"] == 2 and made["vocab_size"]["options"] == {}
    again = run_cli("eval", run, "--corpus", workspace["corpus"], "--evaluator", "perplexity",
                    "--set", "perplexity.max_blocks=1", "--block-size", 16)
    assert again.exit_code == 0, again.output
    last = json.loads((run / "eval.json").read_text())
    assert all(m["perplexity"]["blocks"] == 1 for m in last["models"].values())   # re-run: replaced, not kept
    assert all("vocab_size" in m and "minimal_pairs" in m for m in last["models"].values())
    assert last["settings"]["by_evaluator"]["perplexity"]["options"]["max_blocks"] == 1


def test_merging_keeps_models_scored_only_before():
    from wml_framework.evaluation import merge_eval_results

    old = {"settings": {"evaluators": ["a"]}, "models": {"x": {"a": 1, "seconds": {"a": 0.1}}, "y": {"a": 2}}}
    new = {"settings": {"evaluators": ["b"]}, "models": {"x": {"b": 3, "seconds": {"b": 0.2}}}}     # no path, no stamps: alike
    merged = merge_eval_results(old, new)
    assert merged["models"] == {"x": {"a": 1, "b": 3, "seconds": {"a": 0.1, "b": 0.2}}, "y": {"a": 2}}
    assert merge_eval_results(None, new) is new


def test_results_of_other_weights_or_another_folder_are_not_merged(workspace, tmp_path, monkeypatch):
    """Would catch: a run resumed and trained further keeping the minimal-pair numbers of its earlier
    weights, and a file written with ``--json-out`` for one folder mixing in another folder's models."""
    import os
    import shutil

    from wml_framework.evaluation import merge_eval_results

    run = tmp_path / "run"
    shutil.copytree(workspace["run"], run)
    assert run_cli("eval", run, "--corpus", workspace["corpus"], "--limit", 3, "--set", "perplexity.max_blocks=2",
                   "--block-size", 16).exit_code == 0
    weights = run / "peers" / "peer_1" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))   # peer_1 exported anew
    host = PluginHost()
    monkeypatch.setattr(plugins, "_HOST", host)
    host.register(CountingEvaluatorPlugin(), "counting-test")
    assert run_cli("eval", run, "--evaluator", "vocab_size").exit_code == 0
    after = json.loads((run / "eval.json").read_text())
    assert after["settings"]["evaluators"] == ["vocab_size"]
    assert all("perplexity" not in m and "minimal_pairs" not in m for m in after["models"].values())
    old = {"path": "runs/a", "settings": {"evaluators": ["x"]}, "models": {"peer_0": {"x": 1, "weights": "s"}}}
    other = {"path": "runs/b", "settings": {"evaluators": ["y"]}, "models": {"peer_0": {"y": 2, "weights": "s"}}}
    assert merge_eval_results(old, other) is other


class NotCallableEvaluatorPlugin:
    @hookimpl
    def wml_register_evaluators(self, register):
        register("not_callable", lambda cfg, **_options: 42)


def test_an_evaluator_factory_that_makes_no_callable_is_named_as_what_failed(workspace, monkeypatch):
    """Would catch: the failure blamed on the registration hook, which ran long before and succeeded."""
    host = PluginHost()
    monkeypatch.setattr(plugins, "_HOST", host)
    host.register(NotCallableEvaluatorPlugin(), "not-callable-test")
    result = CliRunner().invoke(main, ["eval", str(workspace["run"] / "champion"), "--evaluator", "not_callable"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "creating evaluator 'not_callable'" in result.output and "not callable: 42" in result.output
    assert "wml_register_evaluators" not in result.output


@pytest.mark.slow
def test_eval_as_a_subprocess(workspace, tmp_path):
    target = tmp_path / "eval.json"
    env = {**os.environ, "WML_CACHE_DIR": str(workspace["cache"])}
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "eval", str(workspace["run"] / "peers" / "peer_2"),
                           "--corpus", str(workspace["corpus"]), "--set", "perplexity.max_blocks=2", "--block-size", "16",
                           "--limit", "3", "--json-out", str(target)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "min. pairs (macro)" in proc.stdout and "peer_2" in proc.stdout
    assert "seq/s" not in proc.stderr  # no progress bars when stderr is not a terminal
    out = json.loads(target.read_text())
    assert out["models"]["peer_2"]["minimal_pairs"]["pairs"] == 24
    assert out["models"]["peer_2"]["perplexity"]["blocks"] == 2


def test_thread_policy(monkeypatch):
    import torch

    from wml_framework.evaluation.scoring import choose_threads

    assert choose_threads("3") == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count() or 1), 0.0, 0.0))
    assert choose_threads("auto") == 1  # every core already busy: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads("auto") == torch.get_num_threads()
    result = run_cli("eval", ".", "--threads", "0")
    assert result.exit_code == 2 and "--threads" in result.output
    result = run_cli("eval", ".", "--threads", "many")
    assert result.exit_code == 2 and "'many'" in result.output
