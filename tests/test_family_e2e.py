"""Teachers of eight Hugging Face families end to end: ``wml init-peers --init bayes``, a 5-step
``wml run --teacher DIR`` (peers exported as standard model folders) and ``wml eval`` on the run.
One slow test per family; the families' counting and sizing are tested fast in the other
``test_family_*`` modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_family_counting import CAUSAL, tiny_family_config

from wml_framework.api import build_model, model_class
from wml_framework.cli import main

RUN = {"block_size": 32, "batch_size": 4, "num_batches": 1, "num_peers": 2, "max_steps": 5, "warmup_iters": 1,
       "lr_decay_iters": 5, "outer_every": 2, "eval_interval": 5, "eval_batches": 1, "bayesian_init_points": 5,
       "bayesian_n_iter": 60, "checkpoint_interval": 5, "blimp_limit": 2, "device": "cpu",
       "enable_early_stopping": False, "threads": "1", "seed": 3}


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from wml_framework.text.tokenizer import train_tokenizer

    return train_tokenizer([Path(corpus).read_text(encoding="utf-8")], 300)


def save_teacher(model_type: str, tokenizer, path: Path) -> int:
    """A tiny random teacher with the corpus's tokenizer (a few spare rows: some families' tokenizer
    classes add a token); returns its parameter count."""
    cfg = tiny_family_config(model_type, vocab_size=len(tokenizer) + 4)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def check_peer(folder: Path, teacher_type, parameters: int):
    """An exported peer loads as the teacher's class with the parameters reported."""
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == teacher_type.config_class.model_type
    peer = model_class(teacher_type.config_class.from_pretrained(folder)).from_pretrained(folder)
    assert type(peer) is teacher_type
    assert sum(p.numel() for p in peer.parameters()) == parameters


@pytest.mark.slow
@pytest.mark.parametrize("model_type", CAUSAL)
def test_a_teacher_of_each_family_through_init_peers_run_and_eval(model_type, tokenizer, corpus, tmp_path):
    teacher = tmp_path / "teacher"
    n = save_teacher(model_type, tokenizer, teacher)
    teacher_type = model_class(tiny_family_config(model_type))
    targets = [round(n / 2), round(n / 3)]

    out = tmp_path / "peers"
    res = invoke("init-peers", "--init", "bayes", "--teacher", teacher, "--peers", 2, "--out", out,
                 "--set", "bayesian_n_iter=60", "--set", "bayesian_init_points=5", "--set", "seed=3")
    assert res.exit_code == 0, res.output
    table = json.loads((out / "init_table.json").read_text())
    assert [r["target"] for r in table] == targets
    for row in table:
        assert row["rel_error"] <= 0.01, row
        check_peer(out / f"peer_{row['peer']}", teacher_type, row["parameters"])

    run = tmp_path / "run"
    args = ["run", "--teacher", teacher, "--corpus", corpus, "--out", run]
    for key, value in RUN.items():
        args += ["--set", f"{key}={value}"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    table = json.loads((run / "init_table.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert [r["target"] for r in table] == targets and all(r["rel_error"] <= 0.01 for r in table)
    assert summary["steps"] == 5 and summary["teacher"]["parameters"] == n
    for row, peer in zip(table, summary["peers"]):
        assert peer["parameters"] == row["parameters"]
        check_peer(run / "peers" / peer["name"], teacher_type, peer["parameters"])
        assert (run / "peers" / peer["name"] / "tokenizer.json").is_file()

    res = invoke("eval", run, "--limit", 2, "--set", "perplexity.max_blocks=2", "--device", "cpu")
    assert res.exit_code == 0, res.output
    evaluation = json.loads((run / "eval.json").read_text())
    assert list(evaluation["models"]) == ["peer_0", "peer_1", "ensemble", "teacher"]
    for name in ("peer_0", "peer_1", "teacher"):
        assert evaluation["models"][name]["perplexity"]["loss"] > 0
        assert evaluation["models"][name]["minimal_pairs"]["pairs"] > 0
