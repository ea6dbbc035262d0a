"""Budgets that are fair (issue 24 §3): ``budget`` and ``teacher_budget`` parsed, resolved into steps
once the data is known, recorded in summary.json, kept across a resume; ``wml compare`` reporting the
teacher's words beside the peers', and its ``wml_champion`` arm."""

from __future__ import annotations

import json
import math
import os
import signal
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from run_helpers import TINY, read_metrics, tiny_config, toy_corpus

from wml_framework import config as cfgmod
from wml_framework import hookimpl
from wml_framework.compare import Method, make_plan, parse_methods
from wml_framework.compare.results import budget_lines
from wml_framework.evaluation.run_reader import read_jsonl
from wml_framework.runner import RunError, WMLTrainer
from wml_framework.runtime.budget_spec import parse_budget
from wml_framework.runtime.interrupts import Interrupted
from wml_framework.text.tokens import prepare_for
from wml_framework.training.budget import resolve_run

# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize("text, amount, unit", [
    ("2 epochs", 2, "epochs"), ("1.5 epochs", Fraction(3, 2), "epochs"), ("1 epoch", 1, "epochs"),
    ("300000 words", 300_000, "words"), ("300k words", 300_000, "words"), ("2M words", 2_000_000, "words"),
    ("1.5M tokens", 1_500_000, "tokens"), ("5000 tokens", 5000, "tokens"), (" 1.5k Words ", 1500, "words"),
])
def test_the_documented_budgets_parse_to_exact_amounts(text, amount, unit):
    """Catches: a multiplier dropped ("300k" read as 300) or applied twice, a unit mapped to another,
    an amount kept as a float (1.5M tokens as 1499999.9999)."""
    spec = parse_budget(text)
    assert (spec.amount, spec.unit) == (amount, unit)
    assert cfgmod.from_dict({"budget": text, "teacher_budget": text}, check_plugins=False).budget == text


@pytest.mark.parametrize("key, value, needle", [
    ("budget", "2 epoch s", "expected '' (use max_steps) or a positive amount"),
    ("budget", "2", "expected ''"), ("budget", "words", "expected ''"), ("budget", "2 steps", "expected ''"),
    ("budget", "0 epochs", "expected a positive amount"), ("budget", "1.5 words", "whole number of words"),
    ("budget", "peers", "expected ''"), ("teacher_budget", "peer", "'peers' (one peer's tokens)"),
    ("budget", "-1 epochs", "expected ''"), ("budget", "2m words", "expected ''"),
])
def test_a_bad_budget_fails_when_the_config_is_validated_in_one_line(key, value, needle):
    """Catches: a malformed budget accepted (and failing, or meaning something else, only once the data
    is tokenized), 'peers' accepted for the peers' own budget, a message without the key and value."""
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.from_dict({key: value}, check_plugins=False)
    message = str(info.value)
    assert message.startswith(f"config key {key!r}: value {value!r} is not allowed; ") and needle in message
    assert "\n" not in message


@given(number=st.integers(1, 10**6), decimals=st.integers(0, 3), scale=st.sampled_from(["", "k", "M", "B"]),
       unit=st.sampled_from(["epochs", "words", "tokens"]))
def test_any_written_amount_parses_exactly(number, decimals, scale, unit):
    """Catches: float parsing (Fraction('0.001') × 10⁹ must stay whole), a scale letter misread; and the
    refusal of fractional words or tokens applied to whole ones."""
    text = f"{number / 10**decimals:.{decimals}f}{scale} {unit}"
    exact = Fraction(number, 10**decimals) * {"": 1, "k": 10**3, "M": 10**6, "B": 10**9}[scale]
    if unit != "epochs" and exact.denominator != 1:
        with pytest.raises(ValueError, match="whole number"):
            parse_budget(text)
    else:
        assert parse_budget(text).amount == exact


# --------------------------------------------------------------------------- resolution (arithmetic)

def test_resolution_rounds_steps_up_and_sets_both_decays():
    """2 epochs of 10,000 tokens at 4 × 32 × 2 = 256 tokens a step: ⌈20,000 / 256⌉ = 79 steps.
    Catches: steps rounded down (less than the budget), a world-size factor the loop does not count,
    lr_decay_iters or omega_decay_iters left at their configured values, the teacher's 'peers' rounded
    up (more tokens than a peer)."""
    cfg = cfgmod.from_dict({**TINY, "num_batches": 2, "budget": "2 epochs", "teacher_budget": "peers",
                            "outer_every": 5}, check_plugins=False)
    resolved, peers, teacher = resolve_run(cfg, 10_000, 7_000)
    assert (peers.steps, peers.tokens, peers.target_tokens) == (79, 79 * 256, 20_000)
    assert (resolved.max_steps, resolved.lr_decay_iters, resolved.omega_decay_iters) == (79, 79, 16)
    assert peers.epochs == pytest.approx(79 * 256 / 10_000) and peers.words == round(79 * 256 * 0.7)
    assert teacher.tokens_per_step == 128 and teacher.steps == 20_000 // 128 == resolved.teacher_steps
    assert 20_000 - 128 < teacher.tokens <= 20_000
    words, _, _ = resolve_run(cfg.replace(budget="300k words", teacher_budget=""), 10_000, 7_000)
    assert words.max_steps == math.ceil(math.ceil(300_000 * 10_000 / 7_000) / 256)
    assert words.teacher_steps == cfg.teacher_steps                      # no teacher budget: teacher_steps
    plain, budget, _ = resolve_run(cfg.replace(budget=""), 10_000, 7_000)
    assert plain.max_steps == cfg.max_steps and budget.as_dict()["spec"] == ""


def test_budget_steps_scales_the_batch_and_keeps_the_schedule():
    """The champion's recipe on data of another size: 2 epochs of 100,000 tokens in about 10 steps of
    micro-batches of 4 × 32 tokens: round(200,000 / (10 × 128)) = 156 micro-batches a step, 11 steps.
    Catches: budget_steps ignored (num_batches kept, so hundreds of steps), the steps not recomputed
    from the scaled batch, a scale of 0 micro-batches on a small budget, the teacher's step scaled too."""
    cfg = cfgmod.from_dict({**TINY, "num_batches": 60, "budget": "2 epochs", "budget_steps": 10,
                            "teacher_budget": "peers"}, check_plugins=False)
    resolved, peers, teacher = resolve_run(cfg, 100_000, 70_000)
    assert resolved.num_batches == 156 and peers.tokens_per_step == 156 * 128
    assert peers.steps == math.ceil(200_000 / (156 * 128)) == resolved.max_steps == resolved.lr_decay_iters == 11
    assert teacher.tokens_per_step == 128
    tiny, tiny_budget, _ = resolve_run(cfg.replace(budget="1000 tokens"), 100_000, 70_000)
    assert tiny.num_batches == 1 and tiny_budget.steps == math.ceil(1000 / 128)
    kept, _, _ = resolve_run(cfg.replace(budget_steps=0), 100_000, 70_000)
    assert kept.num_batches == 60
    no_budget, _, _ = resolve_run(cfg.replace(budget=""), 100_000, 70_000)
    assert no_budget.num_batches == 60 and no_budget.max_steps == cfg.max_steps


# --------------------------------------------------------------------------- a run with a budget

SMALL_BUDGET = dict(budget="2 epochs", teacher_budget="peers", batch_size=8, blimp="", eval_interval=10, val_fraction=0.2,
                    checkpoint_interval=5, threads="1")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return toy_corpus(tmp_path_factory.mktemp("budget") / "toy.txt", sentences=500)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, small_corpus):
    cfg = tiny_config(small_corpus, **SMALL_BUDGET)
    run, lines = tmp_path_factory.mktemp("budget-run") / "run", []
    summary = WMLTrainer.from_config(cfg, run, log=lines.append).train()
    train = len(prepare_for(cfg, log=lambda m: None).train)
    return run, summary, lines, train, cfg


@pytest.mark.slow
def test_two_epochs_train_two_epochs_and_the_teacher_no_more_than_a_peer(budget_run):
    """Catches: the budget not reaching the loop (max_steps trained instead), its steps rounded down,
    tokens per step counted without num_batches or batch_size, the teacher's 'peers' budget ignored
    (teacher_steps trained) or exceeding a peer's tokens, summary.json without the budget."""
    run, summary, lines, train, cfg = budget_run
    step = cfg.batch_size * cfg.block_size * cfg.num_batches
    assert 2 * train <= summary["tokens"] < 2 * train + step
    last = [r for r in read_metrics(run) if r["kind"] == "train"][-1]
    assert last["tokens"] == summary["tokens"] and last["step"] == summary["steps"] == summary["budget"]["steps"]
    b = summary["budget"]
    assert b["spec"] == "2 epochs" and b["tokens"] == summary["tokens"] and b["target_tokens"] == 2 * train
    assert b["epochs"] == pytest.approx(summary["tokens"] / train, abs=1e-4) and b["words"] > 0
    teacher = [r for r in read_jsonl(run / "teacher_metrics.jsonl") if r["kind"] == "train"][-1]
    per_step = cfg.batch_size * cfg.block_size
    assert 2 * train - per_step < teacher["tokens"] <= 2 * train <= summary["tokens"]
    assert summary["teacher_budget"]["tokens"] == teacher["tokens"] and summary["teacher_budget"]["spec"] == "peers"
    assert summary["words"]["teacher"] == teacher["words"] and summary["words"]["peers"] == last["words"]
    assert any(line.startswith("budget: peers '2 epochs' = ") for line in lines)
    assert cfgmod.read_toml(run / "config.toml")["max_steps"] == TINY["max_steps"]   # the text is what is saved


@pytest.mark.slow
def test_the_learning_rate_reaches_its_floor_at_the_budgets_last_step(budget_run):
    """Catches: lr_decay_iters left at the configured 12 while the budget trains longer (the cosine
    would sit at min_lr for most of the run)."""
    run, summary, _, _, cfg = budget_run
    lrs = {r["step"]: r["lr"] for r in read_metrics(run) if r["kind"] == "train"}
    assert cfg.min_lr <= lrs[summary["steps"]] < 1.1 * cfg.min_lr     # the record holds the step's lr(step − 1)
    assert lrs[cfg.lr_decay_iters + 1] > 2 * cfg.min_lr


class _SigtermAt:
    """Sends SIGTERM to its own process when the peers' training reaches ``step`` (an event, not a time)."""

    def __init__(self, step):
        self.step, self.sent = step, False

    @hookimpl
    def wml_run_event(self, event, payload):
        if event == "train" and payload["step"] == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_resumed_budget_run_ends_where_the_uninterrupted_one_did(tmp_path, budget_run, small_corpus):
    """Catches: a resume that recomputes other steps (or reads max_steps from config.toml), so that the
    schedule, the end or the records differ from the uninterrupted run's; the "resumed at step k/N"
    line naming the configured max_steps instead of the budget's."""
    import sys

    from wml_framework.plugin_system.host import PluginHost
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from kill_resume import differences

    whole, summary, _, _, cfg = budget_run
    host = PluginHost()
    host.register(_SigtermAt(7), "sigterm")
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        WMLTrainer.from_config(cfg, run, host=host, log=lambda m: None).train()
    lines = []
    WMLTrainer.from_run_dir(run, log=lines.append).train()
    assert f"resumed at step 7/{summary['steps']}" in lines
    assert differences(whole, run) == []


def test_a_budget_run_refuses_a_resume_that_sets_its_steps(tmp_path):
    """Catches: ``--set max_steps=…`` on a budget run accepted and then silently overridden by the budget."""
    cfgmod.save(cfgmod.from_dict({**TINY, "budget": "2 epochs"}, check_plugins=False), tmp_path / "config.toml")
    with pytest.raises(RunError, match="config key 'max_steps' cannot change when a run with budget '2 epochs'"):
        WMLTrainer.from_run_dir(tmp_path, overrides={"max_steps": 40})
    assert WMLTrainer.from_run_dir(tmp_path, overrides={"budget": "3 epochs"}).cfg.budget == "3 epochs"


# --------------------------------------------------------------------------- wml compare

def test_the_champion_arm_takes_the_preset_but_not_what_the_comparison_holds_equal(tmp_path):
    """Catches: the arm's numbers copied rather than read from the preset, the preset's max_steps or
    early stopping or peer sizing overriding the comparison's, the outer_every check refusing a budget
    comparison whose steps are not known yet, and a bad member config passing the plan."""
    base = cfgmod.from_dict({**TINY, "budget": "2 epochs", "max_steps": 3, "outer_every": 4,
                             "enable_early_stopping": False, "bayesian_n_iter": 2})
    plan = make_plan(base, parse_methods("wml,wml_champion"), 1, tmp_path / "cmp")
    champion = plan.member_config(plan.members[1])
    preset = cfgmod.PRESETS["babylm-champion"]
    for key in ("learning_rate", "min_lr", "block_size", "batch_size", "num_batches", "warmup_iters", "omega_lr",
                "omega_min_lr", "outer_every", "loss_alpha"):
        assert getattr(champion, key) == preset[key], key
    assert (champion.max_steps, champion.enable_early_stopping, champion.bayesian_n_iter) == (3, False, 2)
    assert champion.budget_steps == preset["max_steps"] and plan.member_config(plan.members[0]).budget_steps == 0
    teacher = plan.teacher_config()          # the comparison's blocks, with positions for the champion's
    assert (teacher.block_size, teacher.teacher_positions) == (32, 512)
    assert plan.eval_options(plan.members[1]) == {"block_size": 32}
    assert plan.eval_options(plan.members[0]) == {}
    record = plan.members[1].method.to_dict()
    assert record["preset"] == "babylm-champion" and "max_steps" in record["left_out"]
    assert "hypergradient" not in record["from_preset"] and "learning_rate" in record["from_preset"]
    assert [m.label for m in parse_methods(None)] == ["wml", "wml_adam", "wml_first_order", "dml", "kd", "ce"]
    bad = Method("bad", "a preset arm with a bad value", "wml", "mirror", {"learning_rate": -1.0}, preset="x")
    with pytest.raises(cfgmod.ConfigError, match="method 'bad': config key 'learning_rate'"):
        make_plan(base, [*parse_methods("wml,wml_champion"), bad], 1, tmp_path / "cmp2")
    with pytest.raises(cfgmod.ConfigError, match="outer_every"):
        make_plan(cfgmod.from_dict({**TINY, "max_steps": 3, "outer_every": 4}), parse_methods("wml"), 1, tmp_path / "c3")


def _budgets(teacher_tokens, peer_tokens, peer_steps):
    return {"budgets": {
        "teacher": {"given": False, "spec": "peers", "tokens": teacher_tokens, "words": teacher_tokens // 2,
                    "steps": teacher_tokens // 128, "tokens_per_step": 128},
        "peers": {"wml": {"spec": "2 epochs", "tokens": peer_tokens, "words": peer_tokens // 2, "epochs": 2.0,
                          "steps": peer_steps, "teacher_words_ratio": teacher_tokens / peer_tokens}},
        "teacher_equals_peers": abs(teacher_tokens - peer_tokens) < 128 + peer_tokens / peer_steps,
        "teacher_within_peers": teacher_tokens <= peer_tokens}}


def test_the_table_header_says_whether_the_teacher_read_more_than_the_peers():
    """Catches: the teacher's words missing from comparison.md, a teacher that read three times the
    peers' text reported as equal, or an equal one as more."""
    equal = " ".join(budget_lines(_budgets(20_000, 20_224, 79)))
    assert "teacher 10,000 words (20,000 tokens" in equal and "`wml` 10,112 words" in equal
    assert "as many tokens as one peer's budget" in equal
    more = " ".join(budget_lines(_budgets(60_672, 20_224, 79)))
    assert "MORE than the peers (3.00× a peer's words at most)" in more and "as many tokens" not in more


@pytest.mark.slow
def test_compare_with_the_champion_arm_reports_every_runs_words(tmp_path):
    """A budget comparison of ``wml`` and ``wml_champion`` on tiny data, end to end.
    Catches: comparison.json without the peers' words, tokens and epochs per method or the teacher's
    words; the shared teacher too short for the champion's blocks of 512 (its member would fail); the
    teacher reading more than the peers under teacher_budget = 'peers'; the champion's held-out loss
    scored on its own 512-token blocks (not the comparison's); the preset's keys not in comparison.md."""
    from wml_framework.cli import main

    corpus = toy_corpus(tmp_path / "toy.txt", sentences=3000)
    values = {**TINY, "threads": "1", "budget": "2 epochs", "teacher_budget": "peers", "val_fraction": 0.1, "blimp": ""}
    sets = [a for k, v in values.items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", "--corpus", str(corpus), *sets, "--out", str(out),
                                       "--methods", "wml,wml_champion", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "comparison.json").read_text())
    assert data["missing"] == [] and data["config"]["budget"] == "2 epochs"
    b = data["budgets"]
    for label in ("wml", "wml_champion"):
        peers = b["peers"][label]
        assert peers["spec"] == "2 epochs" and peers["epochs"] >= 2 and peers["words"] > 0 and peers["tokens"] > 0
    assert b["teacher"]["words"] > 0 and b["teacher_within_peers"] is True
    assert b["teacher"]["tokens"] <= min(p["tokens"] for p in b["peers"].values())
    by = {m["label"]: m for m in data["methods"]}
    assert by["wml_champion"]["words"] == b["peers"]["wml_champion"]["words"]
    assert by["wml_champion"]["preset"] == "babylm-champion"
    # the card's 100 steps kept, its 60 micro-batches a step scaled down to what 2 epochs of this text fill
    summary = json.loads((out / "members" / "wml_champion-seed1337" / "summary.json").read_text())
    got, micro = summary["budget"], 3 * 512
    assert got["tokens_per_step"] == micro * max(1, round(got["target_tokens"] / (100 * micro))) < 60 * micro
    assert got["steps"] == math.ceil(got["target_tokens"] / got["tokens_per_step"])
    evaluation = json.loads((out / "members" / "wml_champion-seed1337" / "eval.json").read_text())
    assert evaluation["models"]["peer_0"]["perplexity"]["block_size"] == TINY["block_size"]
    md = (out / "comparison.md").read_text()
    assert "Training text, per run: teacher " in md and "takes the `babylm-champion` preset's settings" in md
    assert data["checks"]["same_tokens"] == {"1337": True}
