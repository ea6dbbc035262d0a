"""``threads = "auto"``: the run times its own steps on each thread count and keeps the faster.

Would catch: a governor that keeps the slower count, that never looks again when the load changes,
that lets an outer step (a slower kind of step) decide, that overrides a fixed setting, that
touches torch's threads on a GPU run, and a run that leaves torch on its chosen count afterwards.
"""

from __future__ import annotations

import pytest
import torch

from wml_framework.runtime import threads as th
from wml_framework.runtime.threads import ThreadGovernor, parse_threads


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def drive(gov: ThreadGovernor, seconds_for: dict, steps: int, comparable=lambda k: True) -> list[int]:
    """Run ``steps`` fake steps whose duration depends on the thread count in use."""
    used = []
    for k in range(steps):
        gov.before_step()
        used.append(torch.get_num_threads())
        gov.after_step(seconds_for[torch.get_num_threads()], comparable=comparable(k))
    return used


@pytest.mark.parametrize("faster", [1, 2])
def test_auto_alternates_the_candidates_then_keeps_the_faster(faster):
    gov = ThreadGovernor("auto", "cpu", cores=2)
    slow = 3 - faster
    used = drive(gov, {faster: 0.1, slow: 0.3}, 2 * th.PROBE_STEPS + 5)
    probe = used[:2 * th.PROBE_STEPS]
    assert sorted(probe) == [1] * th.PROBE_STEPS + [2] * th.PROBE_STEPS
    assert all(a != b for a, b in zip(probe, probe[1:]))            # interleaved, not in blocks
    assert used[2 * th.PROBE_STEPS:] == [faster] * 5
    assert gov.choices == [(2 * th.PROBE_STEPS, faster)]


def test_auto_looks_again_and_follows_a_change_of_load(monkeypatch):
    monkeypatch.setattr(th, "REPROBE_EVERY", 20)
    gov = ThreadGovernor("auto", "cpu", cores=2)
    drive(gov, {1: 0.3, 2: 0.1}, 20)                               # idle machine: 2 threads win
    assert gov.current == 2
    drive(gov, {1: 0.1, 2: 0.4}, 20)                               # a neighbour arrives: 1 thread wins
    assert gov.current == 1 and [c for _, c in gov.choices] == [2, 1]


def test_steps_that_are_not_comparable_do_not_vote():
    gov = ThreadGovernor("auto", "cpu", cores=2)
    # every other step is an outer step, ten times slower: if it voted, the count it fell on would lose
    drive(gov, {1: 0.2, 2: 0.1}, 4 * th.PROBE_STEPS, comparable=lambda k: k % 2 == 0)
    assert gov.current == 2


def test_a_fixed_count_is_used_as_given_and_never_probed():
    gov = ThreadGovernor("1", "cpu", cores=8)
    assert drive(gov, {1: 1.0}, 10) == [1] * 10 and gov.choices == []


def test_a_gpu_run_leaves_torchs_threads_alone():
    torch.set_num_threads(1)
    gov = ThreadGovernor("auto", "cuda", cores=2)
    gov.before_step()
    gov.after_step(0.1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("spec, expected", [("auto", None), (None, None), ("4", 4), (2, 2)])
def test_parse_threads(spec, expected):
    assert parse_threads(spec) == expected


@pytest.mark.parametrize("spec", ["0", "-2", "two", 0])
def test_parse_threads_refuses_what_is_not_a_count(spec):
    with pytest.raises(ValueError, match="threads"):
        parse_threads(spec)


@pytest.mark.slow
def test_a_run_restores_the_callers_thread_count(tmp_path, corpus):
    from run_helpers import tiny_config

    from wml_framework.runner import WMLTrainer

    torch.set_num_threads(1)
    cfg = tiny_config(corpus, threads="2", max_steps=2, teacher_steps=2, blimp="", eval_interval=2)
    WMLTrainer.from_config(cfg, tmp_path / "run", log=lambda m: None).train()
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("spec", ["auto", "1", "4", " 2 ", "0", "-1", "+2", "two", "1.5", "²", "", "2.0"])
def test_the_setting_the_run_and_wml_eval_read_threads_alike(spec):
    """The configuration, the run's governor and ``wml eval --threads`` accept exactly the same values.

    Would catch: the three readings of ``threads`` drifting apart (a config that accepts what the
    run then cannot read, or the other way round; the config once crashed on ``"²"``)."""
    from wml_framework import config as cfgmod
    from wml_framework.evaluation.scoring import choose_threads

    def accepts(read) -> bool:
        try:
            read()
            return True
        except (ValueError, cfgmod.ConfigError):
            return False

    by_config = accepts(lambda: cfgmod.from_dict({"threads": spec}, check_plugins=False))
    assert by_config == accepts(lambda: parse_threads(spec)) == accepts(lambda: ThreadGovernor(spec, "cpu", cores=2)) \
        == accepts(lambda: choose_threads(spec)), spec
    assert by_config == (spec in ("auto", "1", "4", " 2 "))
