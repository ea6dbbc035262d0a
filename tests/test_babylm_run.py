"""A BabyLM-track run end to end: word milestones of every peer, the champion's gathered for the
pipeline (and as git branches), the words and the budget in the log and ``summary.json``."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from run_helpers import TINY

from wml_framework import config as cfgmod
from wml_framework.runner import WMLTrainer
from wml_framework.training.milestones import MILESTONE_FILE

UNIT = 60    # words a milestone's "M" stands for here (about 35 words a step)
SETTINGS = {**TINY, "teacher_steps": 5, "max_steps": 12, "lr_decay_iters": 12, "eval_interval": 6,
            "checkpoint_interval": 6, "blimp_limit": 2, "threads": "1", "babylm_track": "strict-small",
            "milestone_words": UNIT, "babylm_git_branches": True}


@pytest.fixture(scope="module")
def babylm_run(tmp_path_factory):
    """Training and export only (what ``wml run`` does before its evaluation and report)."""
    out = tmp_path_factory.mktemp("babylm") / "entry"
    lines = []
    WMLTrainer.from_config(cfgmod.from_dict(SETTINGS), out, log=lines.append).train()
    return out, "\n".join(lines)


@pytest.mark.slow
def test_a_track_run_writes_loadable_milestones_of_every_peer(babylm_run):
    """Catches milestones named or placed other than the pipeline reads them, written before their
    words were reached, or not loadable as Hugging Face models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, output = babylm_run
    summary = json.loads((run / "summary.json").read_text())
    peers = summary["words"]["peers"]
    expected = [k for k in [*range(1, 10), *range(10, 101, 10)] if k * UNIT <= peers]
    assert len(expected) >= 3
    for k in expected:
        folder = run / "milestones" / f"chck_{k}M"
        meta = json.loads((folder / MILESTONE_FILE).read_text())
        assert k * UNIT <= meta["words"] and meta["milestone_words"] == k * UNIT
        assert len([p for p in folder.iterdir() if p.is_dir()]) == len(summary["peers"])
        model = AutoModelForCausalLM.from_pretrained(folder / summary["champion"])
        AutoTokenizer.from_pretrained(folder / summary["champion"])
        assert model.config.wml_objective == "causal"
    assert not (run / "milestones" / f"chck_{expected[-1] + 1}M").exists()
    words = [json.loads(x)["words"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert words == sorted(words) and words[-1] == peers


@pytest.mark.slow
def test_the_champions_milestones_are_gathered_for_the_pipeline(babylm_run):
    """``babylm/chck_kM/<name>/`` holds the champion at each milestone and the script names each."""
    run, _ = babylm_run
    summary = json.loads((run / "summary.json").read_text())
    gathered = sorted(p.name for p in (run / "babylm").glob("chck_*M"))
    written = sorted(p.name for p in (run / "milestones").glob("chck_*M"))
    assert gathered == written
    for name in gathered:
        a = (run / "babylm" / name / run.name / "model.safetensors").read_bytes()
        assert a == (run / "milestones" / name / summary["champion"] / "model.safetensors").read_bytes()
    script = (run / "babylm" / "eval_all_revisions.sh").read_text()
    assert all(f"{n}" in script for n in gathered) and "eval_zero_shot_fast.sh" in script and " causal " in script


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_champions_milestones_are_git_branches(babylm_run):
    """Catches branches that hold another model than their milestone (or main not the final one)."""
    run, _ = babylm_run
    summary = json.loads((run / "summary.json").read_text())
    repo = run / "babylm" / "hub"
    branches = subprocess.run(["git", "-C", str(repo), "branch", "--format=%(refname:short)"], check=True,
                              capture_output=True, text=True).stdout.split()
    written = sorted(p.name for p in (run / "milestones").glob("chck_*M"))
    assert sorted(branches) == sorted([*written, "main"])
    for name in written[:2]:
        blob = subprocess.run(["git", "-C", str(repo), "show", f"{name}:model.safetensors"], check=True,
                              capture_output=True).stdout
        assert blob == (run / "milestones" / name / summary["champion"] / "model.safetensors").read_bytes()
    main_blob = subprocess.run(["git", "-C", str(repo), "show", "main:model.safetensors"], check=True,
                               capture_output=True).stdout
    assert main_blob == (run / "champion" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_the_words_and_the_budget_are_reported_teacher_included(babylm_run):
    """Catches a budget that leaves out the teacher's words, or a plan that is not told before."""
    run, output = babylm_run
    words = json.loads((run / "summary.json").read_text())["words"]
    teacher = [json.loads(x) for x in (run / "teacher_metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert words["teacher"] == teacher[-1]["words"] > 0
    assert words["total"] == words["teacher"] + words["peers"] and words["within_budget"] is True
    assert words["budget"] == 100_000_000 and words["track"] == "strict-small"
    plan = output.index("planned teacher")
    assert plan < output.index("teacher: training") and "would be within the strict-small budget" in output
    assert f"total {words['total']:,} is within the strict-small budget" in output
