"""``wml tune`` and ``wml compare --tuned``: the search space and its parser, the suggestions, the plan's
refusals (fast); the whole command on a toy corpus, its resume after a kill inside a trial, a failing
trial, and a comparison that takes the tuned settings (slow)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from diverging_plugin import diverging_host
from hypothesis import given, settings
from hypothesis import strategies as st
from run_helpers import TINY, read_metrics, toy_corpus

from wml_framework import config as cfgmod
from wml_framework.cli import main
from wml_framework.compare import parse_methods
from wml_framework.compare.tune import (
    make_space,
    make_tune_plan,
    parse_dimension,
    read_trials,
    run_tune,
)
from wml_framework.compare.tune.plan import check_or_save
from wml_framework.compare.tune.search import Observation, random_trials_for, suggest
from wml_framework.compare.tune.space import settings_for
from wml_framework.compare.tuned import apply_tuned

# --------------------------------------------------------------------------- the space


@settings(max_examples=60, deadline=None)
@given(low=st.floats(1e-6, 1.0), span=st.floats(1.01, 1e4), log=st.booleans(), x=st.floats(0.0, 1.0))
def test_every_point_of_a_parsed_range_maps_inside_its_bounds(low, span, log, x):
    """Catches: a log key searched on the linear scale (its bounds would not be log10 of the range),
    a value of the search coordinates leaking out of [LOW, HIGH] after the log round trip."""
    high = min(low * span, 10.0)
    if not low < high:
        return
    key, dim = parse_dimension(f"learning_rate={low!r}:{high!r}" + (":log" if log else ""))
    assert key == "learning_rate" and dim.log is log
    lo, hi = dim.bounds
    assert (lo, hi) == ((math.log10(low), math.log10(high)) if log else (low, high))
    point = lo + x * (hi - lo)
    value = dim.from_search(point)
    assert low * (1 - 1e-3) <= value <= high * (1 + 1e-3)
    assert dim.to_search(max(value, 1e-300)) == pytest.approx(point, rel=1e-3, abs=1e-3)     # the same point back


def test_whole_number_keys_are_rounded_and_searched_in_log_space():
    """Catches: an int key suggested as a float (outer_every = 6.37 in a config), ':int' accepted on a float key."""
    _, dim = parse_dimension("outer_every=1:50:log:int")
    assert dim.integer and dim.log and dim.bounds == (0.0, math.log10(50))
    assert dim.from_search(math.log10(6.37)) == 6 and isinstance(dim.from_search(0.5), int)
    assert parse_dimension("warmup_iters=0:40")[1].integer                       # int key: whole numbers anyway
    with pytest.raises(cfgmod.ConfigError, match="':int' is only for whole-number keys"):
        parse_dimension("loss_alpha=0.1:0.9:int")


@pytest.mark.parametrize("text, message", [
    ("seed=1:9", "key 'seed' cannot be tuned.*tunable keys: .*learning_rate"),
    ("max_steps=10:99", "'max_steps' cannot be tuned \\(it is the budget"),
    ("min_lr=1e-5:1e-3", "'min_lr' cannot be tuned \\(it follows learning_rate; tune min_lr_ratio"),
    ("block_size=8:64", "'block_size' cannot be tuned \\(it is not a numeric key of the optimization"),
    ("lerning_rate=1:2", "'lerning_rate' cannot be tuned \\(it is not a config key"),
    ("loss_alpha=0.1", "is not LOW:HIGH"),
    ("loss_alpha=0.1:0.9:cubic", "is not LOW:HIGH"),
    ("loss_alpha=0.9:0.1", "LOW must be below HIGH"),
    ("loss_alpha=0:2", "bound 2 is outside what loss_alpha allows \\(float in \\[0.0, 1.0\\]\\)"),
    ("learning_rate=0:0.1:log", "bound 0 is outside what learning_rate allows"),
    ("omega_lr=0:10:log", "a log scale needs LOW > 0"),
    ("learning_rate=a:0.1", "bound 'a' is not a number"),
    ("warmup_iters=0.5:9", "bounds of a whole-number key must be whole numbers"),
    ("omega_min_ratio=0.001:2", "bound 2 is outside what omega_min_ratio allows"),
])
def test_a_bad_space_entry_is_one_line_naming_the_key_value_and_what_is_allowed(text, message):
    """Catches: the seed or the budget tuned (a comparison could no longer be fair), a bound outside
    the key's range accepted (every trial of that corner would fail), a log range through zero."""
    with pytest.raises(cfgmod.ConfigError, match=message) as info:
        parse_dimension(text)
    assert "\n" not in str(info.value)


def test_default_spaces_follow_the_methods_loss_and_updater():
    """Catches: kd tuned over WML's α and T, the ω keys tuned for a uniform-ω method, outer_every's range
    above the run's steps (ω would never move), an override not replacing the default range."""
    wml = make_space("wml", "mirror", 200)
    assert wml.keys == ["learning_rate", "loss_alpha", "temperature", "omega_lr", "omega_min_ratio", "outer_every"]
    assert make_space("kd", "uniform", 200).keys == ["learning_rate", "kd_alpha", "kd_temperature"]
    assert make_space("ce", "uniform", 200).keys == ["learning_rate"]
    assert make_space("wml", "uniform", 200).keys == ["learning_rate", "loss_alpha", "temperature"]   # dml
    assert make_space("wml", "mirror", 12).dimensions[-1].high == 12
    over = make_space("kd", "uniform", 200, ["learning_rate=1e-3:1e-2", "kd_temperature=fixed", "weight_decay=0:0.3"])
    assert over.keys == ["learning_rate", "kd_alpha", "weight_decay"] and not over.dimensions[0].log
    with pytest.raises(cfgmod.ConfigError, match="above max_steps \\(12\\)"):
        make_space("wml", "mirror", 12, ["outer_every=1:50"])


def test_ratio_keys_keep_the_configs_relations():
    """Catches: min_lr left at the base value while the tuned learning_rate drops below it (an invalid
    config), omega_min_lr not following omega_lr, the base's ratio lost when only the rate is tuned."""
    base = {"learning_rate": 5e-3, "min_lr": 5e-4, "omega_lr": 1.0, "omega_min_lr": 0.01}
    got = settings_for({"learning_rate": 1e-4, "omega_lr": 2.0, "omega_min_ratio": 0.5}, base)
    assert got["min_lr"] == pytest.approx(1e-5) and got["omega_min_lr"] == pytest.approx(1.0)
    assert "omega_min_ratio" not in got
    assert settings_for({"loss_alpha": 0.3}, base) == {"loss_alpha": 0.3}


# --------------------------------------------------------------------------- the suggestions

def _objective(values: dict) -> float:
    return (math.log10(values["learning_rate"]) + 2.5) ** 2 + (values["loss_alpha"] - 0.3) ** 2


def test_random_draws_come_first_and_repeat_for_the_same_seed():
    """Catches: random draws that depend on how many were drawn before (a resumed tuning would draw
    other values than a straight one), a generator not seeded by the config seed."""
    space = make_space("wml", "uniform", 100)
    assert random_trials_for(16) == 4 and random_trials_for(3) == 2
    straight = suggest(space, seed=7, label="wml", start=0, count=4, random_trials=4, finished=[])
    resumed = suggest(space, seed=7, label="wml", start=2, count=2, random_trials=4, finished=[])
    assert straight[2:] == resumed and {how for _, how in straight} == {"random"}
    assert len({json.dumps(v, sort_keys=True) for v, _ in straight}) == 4
    assert suggest(space, seed=8, label="wml", start=0, count=1, random_trials=4, finished=[]) != straight[:1]


def test_bayesian_suggestions_are_inside_the_bounds_and_a_batch_is_distinct():
    """Catches: suggestions outside the space (a GP's point not mapped back from log space), a batch of
    --jobs 2 suggesting twice the same point (no constant liar), failed trials ignored by the search."""
    space = make_space("wml", "uniform", 100)
    seen = suggest(space, seed=3, label="wml", start=0, count=5, random_trials=5, finished=[])
    finished = [Observation(v, _objective(v)) for v, _ in seen]
    batch = suggest(space, seed=3, label="wml", start=5, count=3, random_trials=5, finished=finished)
    assert [how for _, how in batch] == ["bayes"] * 3
    for values, _ in batch:
        for dim in space.dimensions:
            assert dim.low <= values[dim.key] <= dim.high
    coords = [space.to_search(v) for v, _ in batch]
    for i in range(len(coords)):
        for j in range(i):
            gap = max(abs(coords[i][k] - coords[j][k]) / (d.bounds[1] - d.bounds[0])
                      for k, d in zip(space.keys, space.dimensions))
            assert gap > 0.01, (batch[i], batch[j])


# --------------------------------------------------------------------------- the plan and --tuned

def test_a_tuning_folder_of_other_settings_is_refused_and_may_gain_methods(tmp_path):
    """Catches: a continued tuning with another budget or space mixing its trials with the earlier
    ones; a second method refused in a folder whose teacher it could share."""
    base = cfgmod.from_dict(TINY)
    out = tmp_path / "tune"
    assert check_or_save(make_tune_plan(base, parse_methods("wml"), 4, out)) is False
    assert check_or_save(make_tune_plan(base, parse_methods("wml"), 8, out)) is True          # more trials
    assert check_or_save(make_tune_plan(base, parse_methods("kd"), 4, out)) is True           # another method
    saved = json.loads((out / "tune.json").read_text())
    assert set(saved["methods"]) == {"wml", "kd"} and saved["methods"]["wml"]["trials"] == 8
    assert saved["teacher_method"] == "wml"         # the teacher's config stays the first method's
    with pytest.raises(cfgmod.ConfigError, match="other settings \\(max_steps: 12 then, 13 now\\)"):
        check_or_save(make_tune_plan(cfgmod.from_dict({**TINY, "max_steps": 13}), parse_methods("wml"), 4, out))
    with pytest.raises(cfgmod.ConfigError, match="method wml's space"):
        check_or_save(make_tune_plan(base, parse_methods("wml"), 4, out, space=["loss_alpha=0.2:0.4"]))
    with pytest.raises(cfgmod.ConfigError, match="seed: 1337 then, 1338 now"):
        check_or_save(make_tune_plan(cfgmod.from_dict({**TINY, "seed": 1338}), parse_methods("wml"), 4, out))


def test_what_tuning_must_not_see_or_search_is_refused(tmp_path):
    """Catches (found by review): early stopping, which reads the evaluated half, steering the trials;
    a --space key for one method searched as noise in another's space; a key a budget overwrites
    searched at all."""
    out = tmp_path / "tune"
    with pytest.raises(cfgmod.ConfigError, match="'enable_early_stopping'.*evaluated half"):
        make_tune_plan(cfgmod.from_dict({**TINY, "enable_early_stopping": True}), parse_methods("ce"), 4, out)
    plan = make_tune_plan(cfgmod.from_dict(TINY), parse_methods("wml,kd"), 4, out,
                          space=["kd_alpha=0.1:0.2", "omega_lr=0.1:1:log", "weight_decay=0:0.2"])
    assert "kd_alpha" not in plan.spaces["wml"].keys and "omega_lr" not in plan.spaces["kd"].keys
    assert plan.spaces["kd"].to_dict() != {} and "weight_decay" in plan.spaces["wml"].keys
    assert "weight_decay" in plan.spaces["kd"].keys and "kd_alpha" in plan.spaces["kd"].keys
    with pytest.raises(cfgmod.ConfigError, match="key 'omega_lr' is read by none of the methods tuned \\(ce, kd\\)"):
        make_tune_plan(cfgmod.from_dict(TINY), parse_methods("ce,kd"), 4, out, space=["omega_lr=0.1:1:log"])
    with pytest.raises(cfgmod.ConfigError, match="'lr_decay_iters' cannot be tuned with budget = '2 epochs'"):
        make_tune_plan(cfgmod.from_dict({**TINY, "budget": "2 epochs"}), parse_methods("ce"), 4, out,
                       space=["lr_decay_iters=5:20"])
    with pytest.raises(cfgmod.ConfigError, match="'budget_steps' cannot be tuned"):
        make_tune_plan(cfgmod.from_dict(TINY), parse_methods("ce"), 4, out, space=["budget_steps=1:20"])
    assert not out.exists()


def test_an_unexpected_error_is_the_trials_failure(tmp_path, monkeypatch):
    """Catches (found by review): an error of no expected kind (an OSError, a torch RuntimeError)
    ending the whole tuning with a traceback, or leaving its trial 'pending' for ever."""
    from wml_framework.compare.tune import execute as tune_execute
    from wml_framework.compare.tune.trial import read_trial, run_trial, write_trial

    run_dir = tmp_path / "trial-000"
    write_trial(run_dir, 0, {"learning_rate": 0.001}, "random", {"learning_rate": 0.001}, 1337)

    def broken(*args, **kwargs):
        raise RuntimeError("the disk said no\nsecond line")

    monkeypatch.setattr(tune_execute.run_trial.__globals__["WMLTrainer"], "from_config", broken)
    failure = run_trial(str(run_dir), cfgmod.from_dict(TINY).to_dict())
    assert failure == "RuntimeError: the disk said no"
    trial = read_trial(run_dir)
    assert trial.status == "failed" and trial.failure == failure
    assert "Traceback" in (run_dir / "wml.log").read_text()


def test_a_method_whose_blocks_the_folders_teacher_cannot_hold_is_refused(tmp_path):
    """Catches (found by review): wml_champion (blocks of 512) added to a tuning folder whose teacher
    was trained on shorter blocks: every one of its trials failed at its start, after the work began."""
    out = tmp_path / "tune"
    teacher = out / "teacher_run" / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 64}))
    make_tune_plan(cfgmod.from_dict(TINY), parse_methods("ce"), 4, out)
    with pytest.raises(cfgmod.ConfigError, match="'wml_champion': its blocks of 512 tokens do not fit .*\\(64 positions"):
        make_tune_plan(cfgmod.from_dict({**TINY, "budget": "1 epochs"}), parse_methods("wml_champion"), 4, out)


def _fake_tuning(tmp_path: Path, **base_changes) -> Path:
    """A tuning folder's tune.json as `wml tune` writes it, and a tuned.json for `wml` only."""
    out = tmp_path / "tune"
    plan = make_tune_plan(cfgmod.from_dict({**TINY, **base_changes}), parse_methods("wml"), 4, out)
    check_or_save(plan)
    wml = parse_methods("wml")[0]
    (out / "tuned.json").write_text(json.dumps({"wml": {
        "settings": {"learning_rate": 0.002, "min_lr": 0.0002}, "objective": 4.2, "trial": "trial-003",
        "seed": plan.seed, "method": wml.to_dict()}}))
    return out


def test_compare_tuned_takes_the_settings_and_refuses_the_tuning_seed(tmp_path):
    """Catches: the tuning's seed among the comparison's (settings judged on the seed that chose them),
    a tuning of other shared settings accepted, the tuned values not reaching the method, a method
    not tuned there silently given another's settings."""
    out = _fake_tuning(tmp_path)
    methods = parse_methods("wml,ce")
    with pytest.raises(cfgmod.ConfigError, match="seed 1337, one of this comparison's seeds \\(1336, 1337\\)"):
        apply_tuned(out, cfgmod.from_dict({**TINY, "seed": 1336}), methods, 2)
    with pytest.raises(cfgmod.ConfigError, match="other shared settings.*\\(block_size: 32 then, 64 now\\)"):
        apply_tuned(out, cfgmod.from_dict({**TINY, "seed": 1338, "block_size": 64}), methods, 2)
    got, record = apply_tuned(out, cfgmod.from_dict({**TINY, "seed": 1338, "threads": "1"}), methods, 2)
    assert dict(got[0].settings) == {"hypergradient": "exact", "learning_rate": 0.002, "min_lr": 0.0002}
    assert got[1] == methods[1] and record["methods"]["ce"] == {"tuned": False, "settings": {}}
    assert record["seed"] == 1337 and record["methods"]["wml"]["tuned"] is True
    with pytest.raises(cfgmod.ConfigError, match="was tuned as .*exact'.*not as this comparison's"):
        apply_tuned(out, cfgmod.from_dict({**TINY, "seed": 1338}), parse_methods("wml=wml/mirror/exact_adam"), 1)
    with pytest.raises(cfgmod.ConfigError, match="has no tuned.json"):
        apply_tuned(tmp_path, cfgmod.from_dict(TINY), methods, 1)


def test_a_bad_space_fails_before_any_folder_is_made(tmp_path):
    """Catches: a bad --space or --method found only after the teacher trained."""
    out = tmp_path / "tune"
    for args, message in ((["--space", "seed=1:2"], "key 'seed' cannot be tuned"),
                          (["--space", "loss_alpha=0:3"], "outside what loss_alpha allows"),
                          (["--loss", "kd"], "chosen by each method")):
        result = CliRunner().invoke(main, ["tune", "--method", "wml", "--out", str(out), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, ["tune", "--method", "wml,nope", "--out", str(out)])
    assert result.exit_code == 2 and "--method: 'nope' is neither" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- end to end

def _sets(**changes) -> list[str]:
    out = []
    for key, value in {**TINY, "threads": "1", **changes}.items():
        out += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return out


@pytest.mark.slow
def test_tune_then_compare_tuned_end_to_end(tmp_path):
    """Two methods, three trials each, two at a time; then `wml run --config best.toml` and
    `wml compare --tuned` on a left-out seed.
    Catches: a trial's values not reaching its run (config.toml), trials that evaluate minimal pairs
    (they only need summary.json), a best.toml that `wml run` refuses, a best that is not the lowest
    objective, the comparison not using the tuned settings or not saying which it used."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "tune"
    result = CliRunner().invoke(main, ["tune", "--corpus", str(corpus), *_sets(), "--method", "wml,kd", "--trials", "3",
                                       "--jobs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| trial | how | learning_rate |" in result.output and result.output.strip().endswith("tuned.json")
    tuned = json.loads((out / "tuned.json").read_text())
    assert set(tuned) == {"wml", "kd"}
    for label, keys in (("wml", {"learning_rate", "loss_alpha", "temperature", "omega_lr", "omega_min_ratio",
                                 "outer_every"}), ("kd", {"learning_rate", "kd_alpha", "kd_temperature"})):
        trials = sorted((out / label / "trials").iterdir())
        assert [t.name for t in trials] == ["trial-000", "trial-001", "trial-002"]
        objectives = {}
        for t in trials:
            record = json.loads((t / "trial.json").read_text())
            assert set(record["values"]) == keys and record["seed"] == 1337
            saved = cfgmod.read_toml(t / "config.toml")
            assert all(saved[k] == v for k, v in record["settings"].items()) and saved["seed"] == 1337
            assert saved["min_lr"] == pytest.approx(saved["learning_rate"] / 10)
            assert saved["teacher"] == str(out / "teacher_run" / "teacher")
            assert not (t / "eval.json").exists() and (t / "peers" / "peer_0" / "config.json").is_file()
            objectives[t.name] = json.loads((t / "summary.json").read_text())["fitted_ensemble_omega_half_loss"]
        best = min(objectives, key=objectives.get)
        assert tuned[label]["trial"] == best and tuned[label]["objective"] == objectives[best]
        assert f"| {best} **best** |" in (out / label / "trials.md").read_text()
    assert [json.loads((out / "wml" / "trials" / f"trial-00{k}" / "trial.json").read_text())["origin"]
            for k in range(3)] == ["random", "random", "bayes"]
    assert (out / "teacher_run.log").read_text().count("teacher: training a") == 1
    # the best settings as a config `wml run` accepts: it reruns the best trial
    rerun = tmp_path / "rerun"
    ran = CliRunner().invoke(main, ["run", "--config", str(out / "kd" / "best.toml"), "--set", "blimp=none",
                                    "--out", str(rerun)])
    assert ran.exit_code == 0, ran.output
    assert cfgmod.read_toml(rerun / "config.toml")["kd_alpha"] == tuned["kd"]["settings"]["kd_alpha"]
    # a comparison of the tuned settings, on a seed the tuning left out
    cmp = tmp_path / "cmp"
    args = ["compare", "--corpus", str(corpus), *_sets(seed=1338), "--methods", "kd,ce", "--seeds", "1",
            "--tuned", str(out), "--out", str(cmp)]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    member = cfgmod.read_toml(cmp / "members" / "kd-seed1338" / "config.toml")
    assert {k: member[k] for k in tuned["kd"]["settings"]} == tuned["kd"]["settings"]
    assert cfgmod.read_toml(cmp / "members" / "ce-seed1338" / "config.toml")["learning_rate"] == TINY["learning_rate"]
    md = (cmp / "comparison.md").read_text()
    assert f"| kd | tuned ({tuned['kd']['trial']}" in md and "| ce | not tuned (shared settings) | — |" in md
    assert json.loads((cmp / "comparison.json").read_text())["tuned"]["methods"]["ce"]["tuned"] is False
    assert json.loads((cmp / "compare.json").read_text())["tuned"]["seed"] == 1337
    refused = CliRunner().invoke(main, ["compare", "--corpus", str(corpus), *_sets(), "--methods", "kd", "--seeds", "1",
                                        "--tuned", str(out), "--out", str(tmp_path / "cmp2")])
    assert refused.exit_code == 2 and "the tuning ran at seed 1337" in refused.output


@pytest.mark.slow
def test_tune_through_submitit_jobs(tmp_path):
    """``wml tune --launcher submitit-local``: each trial a submitit job (the SLURM path on this
    machine), collected by the same command, the next suggested as each ends.
    Catches: a trial function or its arguments submitit cannot pickle, results not collected."""
    pytest.importorskip("submitit")
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "tune"
    result = CliRunner().invoke(main, ["tune", "--corpus", str(corpus), *_sets(), "--method", "ce", "--trials", "3",
                                       "--jobs", "2", "--launcher", "submitit-local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("submitted as job") == 3 and "| trial-002" in result.output
    tuned = json.loads((out / "tuned.json").read_text())
    assert tuned["ce"]["objective"] > 0 and list((out / "ce").glob("*_log.out"))


@pytest.mark.slow
def test_a_killed_tuning_resumes_the_interrupted_trial_with_its_values(tmp_path):
    """A real process, SIGKILLed once trial-001 has written its step-4 checkpoint (an event of the run,
    not a time); the same command then skips trial-000, resumes trial-001 with the values of its
    trial.json (each step logged once) and suggests trial-002.
    Catches: a finished trial retrained, an interrupted one restarted with new values or refused,
    the tuning not continuing after the resumed trial."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "tune"
    args = ["tune", "--corpus", str(corpus), *_sets(), "--method", "ce", "--trials", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killer = [sys.executable, str(Path(__file__).parent / "kill_at_event.py"), "checkpoint:step=4,run_dir~trial-001"]
    killed = subprocess.run([*killer, *args], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first, second = out / "ce" / "trials" / "trial-000", out / "ce" / "trials" / "trial-001"
    values = json.loads((second / "trial.json").read_text())["values"]
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    stamp = (first / "summary.json").stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "wml_framework.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(continuing)" in done.stderr and "ce/trial-001 (random, resuming)" in done.stderr
    assert "ce/trial-000 (" not in done.stderr and (first / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((second / "trial.json").read_text())["values"] == values
    assert [r["step"] for r in read_metrics(second) if r["kind"] == "train"] == list(range(1, 13))
    assert [t.status for t in read_trials(*_plan_and_method(out))] == ["done", "done", "done"]


def _plan_and_method(out: Path):
    plan = make_tune_plan(cfgmod.from_dict({**TINY, "corpus": str(out.parent / "toy.txt"), "threads": "1"}),
                          parse_methods("ce"), 3, out)
    return plan, plan.methods[0]


@pytest.mark.slow
def test_failed_trials_are_recorded_and_do_not_stop_the_tuning(tmp_path):
    """Catches: one failing trial aborting the tuning (the later ones never run), a failed trial
    counted as the best, a method with no finished trial written into tuned.json."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    host = diverging_host()
    base = cfgmod.from_dict({**TINY, "corpus": str(corpus), "threads": "1"}, host=host)
    plan = make_tune_plan(base, parse_methods("bad=diverges/uniform,ce", host=host), 2, tmp_path / "tune", host=host)
    lines: list[str] = []
    bests = run_tune(plan, make_host=diverging_host, say=lines.append)
    assert sum("FAILED" in line and "non-finite" in line for line in lines) == 2, lines
    assert bests["bad"] is None and bests["ce"] is not None
    assert [t.status for t in read_trials(plan, plan.methods[0])] == ["failed", "failed"]
    assert "failed: " in (tmp_path / "tune" / "bad" / "trials.md").read_text()
    assert set(json.loads((tmp_path / "tune" / "tuned.json").read_text())) == {"ce"}
    assert not (tmp_path / "tune" / "bad" / "best.toml").exists()
