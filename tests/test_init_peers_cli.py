"""``wml init-peers``: outputs on disk, a real subprocess run, and bad input stopped up front."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_models import (
    build,
    corpus_text,
    tiny_gpt2_config,
    tiny_llama_config,
    toy_corpus,
    word_tokenizer,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from wml_framework.cli import main

VOCAB = 128


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory) -> Path:
    """A saved LLaMA teacher with a tokenizer."""
    path = tmp_path_factory.mktemp("llama_teacher")
    build(tiny_llama_config(vocab_size=VOCAB, hidden=48, ffn=96), seed=0).save_pretrained(path)
    word_tokenizer(VOCAB).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_teacher(tmp_path_factory) -> Path:
    """A saved GPT-2 teacher without tokenizer files."""
    path = tmp_path_factory.mktemp("gpt2_teacher")
    build(tiny_gpt2_config(vocab_size=VOCAB, n_embd=48, n_inner=96), seed=0).save_pretrained(path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["init-peers", *map(str, args)])


def test_l1_writes_peers_table_trace_and_tokenizer(llama_teacher, tmp_path):
    out = tmp_path / "peers"
    res = invoke("--init", "l1", "--teacher", llama_teacher, "--peers", 3, "--out", out)
    assert res.exit_code == 0, res.output
    table = json.loads((out / "init_table.json").read_text())
    trace = json.loads((out / "init_trace.json").read_text())
    assert [r["peer"] for r in table] == [0, 1, 2]
    assert trace["initializer"] == "l1" and trace["family"] == "llama" and len(trace["trace"]) == 3
    teacher = AutoModelForCausalLM.from_pretrained(llama_teacher)
    n = sum(p.numel() for p in teacher.parameters())
    assert [r["target"] for r in table] == [round(n / 2), round(n / 3), round(n / 4)]
    for row in table:
        folder = out / f"peer_{row['peer']}"
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
        peer = AutoModelForCausalLM.from_pretrained(folder)
        assert sum(p.numel() for p in peer.parameters()) == row["parameters"]
        assert set(row) == {"peer", "shape", "parameters", "target", "rel_error"} and row["rel_error"] <= 0.02
        assert AutoTokenizer.from_pretrained(folder)("w5 w6")["input_ids"] == [5, 6]
        assert row["shape"] in res.output
    assert "rel. error" in res.output and "teacher" in res.output


@pytest.mark.slow
def test_bayes_runs_as_a_real_subprocess(gpt2_teacher, tmp_path):
    out = tmp_path / "peers"
    cmd = [sys.executable, "-m", "wml_framework.cli", "init-peers", "--init", "bayes", "--teacher", str(gpt2_teacher),
           "--peers", "2", "--out", str(out), "--set", "bayesian_n_iter=15", "--set", "seed=7"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((out / "init_table.json").read_text())
    trace = json.loads((out / "init_trace.json").read_text())
    assert len(table) == 2 and trace["seed"] == 7
    for peer in (0, 1):   # one search of 10 + 15 probes, a second only where the first missed 1%
        probes = [p for p in trace["trace"] if p["peer"] == peer]
        first = [p["error"] for p in probes[:25] if not p["duplicate"]]
        assert len(probes) == 25 or (len(probes) == 50 and min(first) > 0.01)
    assert table[0]["shape"] != table[1]["shape"]
    for row in table:
        assert row["shape"] in proc.stdout
        folder = out / f"peer_{row['peer']}"
        assert not (folder / "tokenizer.json").exists()           # the teacher had none
        peer = AutoModelForCausalLM.from_pretrained(folder)
        assert sum(p.numel() for p in peer.parameters()) == row["parameters"]
    assert "peers written" in proc.stderr


def test_bayes_init_table_says_which_peers_share_layers_heads_and_width(tmp_path):
    """One layer, one head, width 8: at 35% of it both peers need width 3, so they may differ in
    FFN width only, and init_table.json says so (field and note) while each stays within 1%.
    Would catch: the table losing the initializer's account of diversity on its way to disk."""
    teacher = tmp_path / "teacher"
    build(tiny_gpt2_config(vocab_size=512, n_layer=1, n_head=1, n_embd=8, n_inner=16), seed=0).save_pretrained(teacher)
    out = tmp_path / "peers"
    res = invoke("--init", "bayes", "--teacher", teacher, "--out", out, "--set", "peer_fractions=[0.35,0.35]",
                 "--set", "bayesian_n_iter=20", "--set", "seed=3")
    assert res.exit_code == 0, res.output
    table = json.loads((out / "init_table.json").read_text())
    assert [r["shares_layers_heads_width_with"] for r in table] == [[1], [0]]
    assert table[0]["shape"].startswith("L1·H1·d3·") and table[1]["shape"].startswith("L1·H1·d3·")
    assert "see its note" in table[0]["note"]
    assert table[1]["note"].startswith("same 1 layer, 1 head, width 3 as peer 0 (differs in FFN width only): "
                                       "no shape of other layers, heads or width comes within 1%")
    assert all(r["rel_error"] < 0.01 for r in table)


def test_taylor_importance_from_a_calibration_text_and_a_config_file(llama_teacher, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(corpus_text(toy_corpus(VOCAB, 8, 40, seed=1)))
    toml = tmp_path / "init.toml"
    toml.write_text('prune_importance = "taylor"\nlayer_bound = 0.8\nblock_size = 32\nbatch_size = 4\n')
    out = tmp_path / "peers"
    res = invoke("--init", "l1", "--teacher", llama_teacher, "--peers", 1, "--out", out,
                 "--config", toml, "--calibration", text)
    assert res.exit_code == 0, res.output
    trace = json.loads((out / "init_trace.json").read_text())["trace"][0]
    assert trace["importance"] == "taylor" and trace["layer_bound"] == 0.8


def _no_config_teacher(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _weightless_teacher(tmp_path):
    path = tmp_path / "config_only"
    tiny_llama_config(vocab_size=VOCAB).save_pretrained(path)
    return path


@pytest.mark.parametrize("case,extra,message", [
    ("not a model", [], "has no config.json: not a Hugging Face model folder"),
    ("no weights", [], "has no weights"),
    ("tiny target", ["--set", "peer_fractions=[0.0005]"], "smaller than the smallest model"),
    ("M < 1", ["--peers", "0"], "0 is not in the range x>=1"),
    ("layer_bound 1.5", ["--set", "layer_bound=1.5"], "'layer_bound'"),
    ("layer_bound 0", ["--set", "layer_bound=0"], "'layer_bound'"),
    ("unknown initializer", ["--init", "magic"], "unknown initializer 'magic'"),
    ("fractions disagree", ["--peers", "3", "--set", "peer_fractions=[0.5,0.25]"], "disagrees with peer_fractions"),
    ("taylor without data", ["--set", "prune_importance=taylor"], "needs a calibration batch"),
])
def test_bad_input_stops_with_a_clear_message_before_any_work(case, extra, message, llama_teacher, tmp_path):
    make = {"not a model": _no_config_teacher, "no weights": _weightless_teacher}.get(case)
    teacher = make(tmp_path) if make else llama_teacher
    out = tmp_path / "peers"
    args = ["--teacher", teacher, "--out", out, *extra]
    if "--init" not in extra:
        args = ["--init", "l1", *args]
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists()


@pytest.mark.slow
def test_bad_input_in_a_real_subprocess_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "init-peers", "--init", "bayes",
                           "--teacher", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a Hugging Face model folder" in proc.stderr and "Traceback" not in proc.stderr
