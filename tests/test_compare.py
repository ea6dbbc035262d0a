"""``wml compare``: methods and statistics (fast), the whole command on a toy corpus (CliRunner), and
its resume as a real process killed between members and inside one."""

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
from run_helpers import TINY, read_metrics, toy_corpus

from wml_framework import config as cfgmod
from wml_framework.cli import main
from wml_framework.compare import make_plan, parse_methods
from wml_framework.compare.plan import check_or_save
from wml_framework.compare.stats import mean_std, paired_difference
from wml_framework.plugin_system.host import PluginHost
from wml_framework.runtime import checkpoint

# --------------------------------------------------------------------------- methods, plan, statistics


def test_the_six_builtin_methods_are_the_seed_cards_rows():
    got = {m.label: (m.loss, m.updater, dict(m.settings).get("hypergradient")) for m in parse_methods(None)}
    assert got == {"wml": ("wml", "mirror", "exact"), "wml_adam": ("wml", "mirror", "exact_adam"),
                   "wml_first_order": ("wml", "mirror", "first_order"), "dml": ("wml", "uniform", None),
                   "kd": ("kd", "uniform", None), "ce": ("ce", "uniform", None)}


def test_custom_methods_name_any_installed_loss_and_updater():
    host = PluginHost()
    methods = parse_methods("kd, mine=wml/fixed, adam2=wml/mirror/exact_adam", host=host)
    assert [m.label for m in methods] == ["kd", "mine", "adam2"]
    assert (methods[1].loss, methods[1].updater) == ("wml", "fixed")
    assert dict(methods[2].settings) == {"hypergradient": "exact_adam"}
    with pytest.raises(cfgmod.ConfigError, match="unknown loss 'nope'.*valid: .*wml"):
        parse_methods("x=nope/mirror", host=host)
    with pytest.raises(cfgmod.ConfigError, match="neither a built-in"):
        parse_methods("wml,bogus", host=host)
    with pytest.raises(cfgmod.ConfigError, match="named twice"):
        parse_methods("wml,wml", host=host)


def test_paired_difference_is_students_t_interval():
    """Would catch: a z instead of a t quantile, the std of the values instead of the differences,
    an unpaired difference of means."""
    a, b = [1.0, 2.0, 3.5], [0.5, 1.2, 3.0]
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)          # t_{0.975, 2}
    got = paired_difference(a, b)
    assert got["mean"] == pytest.approx(m) and got["low"] == pytest.approx(m - half)
    assert got["high"] == pytest.approx(m + half) and got["within_noise"] is False
    assert paired_difference([1.0, 2.0], [1.5, 1.0])["within_noise"] is True
    one = paired_difference([1.0], [0.0])
    assert one["low"] is None and one["within_noise"] is True
    assert mean_std([None, 2.0, 4.0]) == {"mean": 3.0, "std": math.sqrt(2.0), "n": 2}


def test_a_bad_value_fails_before_any_folder_is_made(tmp_path):
    corpus = toy_corpus(tmp_path / "toy.txt", sentences=200)
    base = cfgmod.from_dict({**TINY, "corpus": str(corpus)})
    out = tmp_path / "cmp"
    with pytest.raises(cfgmod.ConfigError, match="--baseline: 'ce' is not one of"):
        make_plan(base, parse_methods("wml,kd"), 2, out, baseline="ce")
    with pytest.raises(cfgmod.ConfigError, match="method 'wml'.*outer_every"):
        make_plan(cfgmod.from_dict({**TINY, "max_steps": 1, "outer_every": 5}), parse_methods("wml,kd"), 1, out)
    result = CliRunner().invoke(main, ["compare", "--set", "learning_rate=-1", "--out", str(out)])
    assert result.exit_code == 2 and "learning_rate" in result.output
    result = CliRunner().invoke(main, ["compare", "--loss", "kd", "--out", str(out)])
    assert result.exit_code == 2 and "chosen by each method" in result.output
    assert not out.exists()


def test_a_folder_of_another_comparison_is_refused(tmp_path):
    base = cfgmod.from_dict(TINY)
    plan = make_plan(base, parse_methods("wml,kd"), 2, tmp_path / "cmp")
    assert check_or_save(plan) is False
    assert check_or_save(make_plan(base, parse_methods("wml,kd"), 2, tmp_path / "cmp")) is True
    with pytest.raises(cfgmod.ConfigError, match="other settings.*seeds"):
        check_or_save(make_plan(base, parse_methods("wml,kd"), 3, tmp_path / "cmp"))
    with pytest.raises(cfgmod.ConfigError, match="other settings.*max_steps"):
        check_or_save(make_plan(cfgmod.from_dict({**TINY, "max_steps": 13}), parse_methods("wml,kd"), 2,
                                tmp_path / "cmp"))


# --------------------------------------------------------------------------- end to end

def _args(corpus: Path, out: Path, **changes) -> list[str]:
    values = {**TINY, "threads": "1", **changes}
    sets = []
    for key, value in values.items():
        sets += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return ["compare", "--corpus", str(corpus), *sets, "--out", str(out)]


@pytest.mark.slow
def test_compare_end_to_end(tmp_path):
    """Every member trains the same peers on the same tokens; the table has the paired differences.
    Would catch: members of one seed starting from different weights (a seed consumed by the
    teacher), a method's loss or updater not reaching its runs, the teacher trained per member."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, [*_args(corpus, out), "--methods", "wml,wml_adam,kd", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "[1/6] wml-seed1337" in result.output and "ETA" in result.output
    data = json.loads((out / "comparison.json").read_text())
    assert data["checks"]["same_initial_weights"] == {"1337": True, "1338": True}
    assert data["checks"]["same_tokens"] == {"1337": True, "1338": True}
    assert data["missing"] == [] and data["models"] == ["peer_0", "peer_1", "ensemble"]
    shas = {k: v["initial_weights_sha256"] for k, v in data["members"].items()}
    assert shas["wml-seed1337"] == shas["kd-seed1337"] != shas["wml-seed1338"]   # seeds differ, methods don't
    assert data["teacher"]["role"] == "teacher" and data["teacher"]["heldout_loss"] > 0
    by = {m["label"]: m for m in data["methods"]}
    assert "vs_baseline" not in by["wml"]["models"]["peer_0"]["heldout_loss"]
    diff = by["kd"]["models"]["peer_0"]["heldout_loss"]["vs_baseline"]
    values = by["kd"]["models"]["peer_0"]["heldout_loss"]["per_seed"]
    base = by["wml"]["models"]["peer_0"]["heldout_loss"]["per_seed"]
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(sum(values) / 2 - sum(base) / 2)
    for label, loss, hg in (("wml", "wml", "exact"), ("wml_adam", "wml", "exact_adam"), ("kd", "kd", None)):
        member = out / "members" / f"{label}-seed1338"
        summary = json.loads((member / "summary.json").read_text())
        assert summary["config"]["loss"] == loss
        assert cfgmod.read_toml(member / "config.toml")["teacher"] == str(out / "teacher_run" / "teacher")
        outer = [r for r in read_metrics(member) if r["kind"] == "outer"]
        if hg:
            assert outer and all(r["info"]["hypergradient"] == hg for r in outer)
        else:
            assert not outer
        assert (member / "peers" / "peer_0" / "config.json").is_file()
    assert (out / "teacher_run.log").read_text().count("teacher: training a") == 1
    md = (out / "comparison.md").read_text()
    assert "| kd | peer_0 |" in md and "Δ vs wml" in md and "uniform ω (peers trained apart)" in md
    # both ensembles of every method (trained and fitted ω), and which one the eval.json row is
    assert all(m["ensembles"]["fitted"]["n"] == 2 and m["ensembles"]["trained"]["n"] == 2 for m in data["methods"])
    assert all(m["ensembles"]["fitted"]["mean"] <= m["ensembles"]["trained"]["mean"] + 0.05 for m in data["methods"])
    assert "| method | trained ω | fitted ω | best peer |" in md and "fitted (trained: " in md
    assert (out / "plots" / "heldout_loss.png").stat().st_size > 1000
    # the same command again: everything is skipped and the result is the same
    again = CliRunner().invoke(main, [*_args(corpus, out), "--methods", "wml,wml_adam,kd", "--seeds", "2"])
    assert again.exit_code == 0 and again.output.count("done earlier, skipped") == 6
    assert json.loads((out / "comparison.json").read_text())["methods"] == data["methods"]


@pytest.mark.slow
def test_a_killed_compare_skips_finished_members_and_resumes_the_interrupted_one(tmp_path):
    """SIGKILL once member 1 is finished and member 2 has written its step-10 checkpoint (an event of the
    run, not a time: it lands there however loaded the machine is); the same command then skips member 1
    (its files untouched) and resumes member 2 (each step logged once).
    Would catch: finished members retrained, an interrupted member started over or refused."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "cmp"
    args = [*_args(corpus, out, max_steps=40, lr_decay_iters=40, checkpoint_interval=2, eval_interval=20),
            "--methods", "wml,ce", "--seeds", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first, second = out / "members" / "wml-seed1337", out / "members" / "ce-seed1337"
    killer = [sys.executable, str(Path(__file__).parent / "kill_at_event.py"), "checkpoint:step=10,run_dir~ce-seed1337"]
    killed = subprocess.run([*killer, *args], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint.load(second, warn=lambda m: None)["step"] == 10 and not (second / "summary.json").exists()
    assert (first / "eval.json").is_file()
    stamp = (first / "summary.json").stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "wml_framework.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/2] wml-seed1337: done earlier, skipped" in done.stderr
    assert "ce-seed1337: resuming the interrupted run" in done.stderr
    assert (first / "summary.json").stat().st_mtime_ns == stamp
    steps = [r["step"] for r in read_metrics(second) if r["kind"] == "train"]
    assert steps == list(range(1, 41))
    data = json.loads((out / "comparison.json").read_text())
    assert data["missing"] == [] and data["checks"]["same_initial_weights"] == {"1337": True}
    member = json.loads((second / "compare_member.json").read_text())
    assert member["sessions"] == 1 and member["finished"] is True   # the killed session could not count itself


def test_member_folders_of_other_settings_are_refused(tmp_path):
    """Would catch: a reused member folder (say, after compare.json was moved away) whose run had other
    settings, silently mixed into the statistics."""
    from wml_framework.compare.execute import check_saved_config

    host = PluginHost()
    base = cfgmod.from_dict(TINY)
    plan = make_plan(base, parse_methods("wml,kd"), 1, tmp_path / "cmp", host=host)
    member = plan.members[0]
    member.run_dir.mkdir(parents=True)
    cfgmod.save(plan.member_config(member, host=host), member.run_dir / "config.toml")
    check_saved_config(member.run_dir, plan.member_config(member, host=host), host, "member")   # the same: fine
    other = make_plan(cfgmod.from_dict({**TINY, "learning_rate": 1e-3}), parse_methods("wml,kd"), 1,
                      tmp_path / "cmp", host=host)
    with pytest.raises(cfgmod.ConfigError, match="learning_rate = 0.003, but this comparison has 0.001"):
        check_saved_config(member.run_dir, other.member_config(other.members[0], host=host), host, "member")


@pytest.mark.slow
def test_a_failing_member_does_not_stop_the_comparison(tmp_path):
    """Would catch: one diverging member aborting the whole comparison (the later members never run),
    and the teacher left unscored because the first member failed."""
    from wml_framework.compare import run_compare

    make_host = diverging_host
    corpus = toy_corpus(tmp_path / "toy.txt")
    lines: list[str] = []
    plan = make_plan(cfgmod.from_dict({**TINY, "corpus": str(corpus), "threads": "1"}, host=make_host()),
                     parse_methods("bad=diverges/uniform,ce", host=make_host()), 1, tmp_path / "cmp", host=make_host())
    result = run_compare(plan, make_host=make_host, say=lines.append)
    assert any("bad-seed1337: FAILED" in line and "non-finite" in line for line in lines), lines
    assert result["failed"].keys() == {"bad-seed1337"} and result["missing"] == ["bad-seed1337"]
    assert result["teacher"] is not None                      # scored with ce, the first member to finish
    assert "bad-seed1337 failed" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_the_same_folders_named_another_way_continue_the_comparison(tmp_path, monkeypatch):
    """A corpus named relatively at the start and absolutely now (or from another directory) is the
    same comparison; a key wml gained since the start counts with its default."""
    import json as _json

    corpus = toy_corpus(tmp_path / "toy.txt", sentences=100)
    monkeypatch.chdir(tmp_path)
    first = make_plan(cfgmod.from_dict({**TINY, "corpus": "toy.txt"}), parse_methods("wml,kd"), 1, "cmp")
    assert check_or_save(first) is False
    saved = _json.loads((tmp_path / "cmp" / "compare.json").read_text())
    del saved["base_config"]["peer_placement"]                       # as written by an older wml
    saved["base_config"]["corpus"] = "toy.txt"
    (tmp_path / "cmp" / "compare.json").write_text(_json.dumps(saved))
    monkeypatch.chdir(corpus.parent.parent)
    again = make_plan(cfgmod.from_dict({**TINY, "corpus": str(corpus)}), parse_methods("wml,kd"), 1, tmp_path / "cmp")
    monkeypatch.chdir(tmp_path)
    assert check_or_save(again) is True
