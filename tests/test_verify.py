"""``wml verify``: every built-in passes (as a real subprocess, the acceptance command), and
deliberately broken third-party plugins fail the check that describes their defect."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from wml_framework import hookimpl, plugins
from wml_framework.api import LossResult, UpdateResult, uniform_omega
from wml_framework.cli import main
from wml_framework.plugins import PluginHost
from wml_framework.verify import CheckResult, format_table, run_checks

BUILTIN_LOSSES = ("wml", "kd", "ce")
BUILTIN_UPDATERS = ("mirror", "uniform", "fixed")


@pytest.fixture(scope="module")
def full_run():
    """``wml verify --json`` over everything registered, run once as a real process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "verify", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    return proc


def test_every_builtin_passes(full_run):
    assert full_run.returncode == 0, full_run.stdout[-3000:] + full_run.stderr[-3000:]
    data = json.loads(full_run.stdout)
    assert data["passed"] is True and data["failed"] == 0
    checks = data["checks"]
    names = {(c["kind"], c["name"]) for c in checks}
    assert {("loss", n) for n in BUILTIN_LOSSES} <= names
    assert {("updater", n) for n in BUILTIN_UPDATERS} <= names
    by = {(c["name"], c["check"]): c for c in checks}
    # the reference comparisons the issue asks for, at 1e-8 relative
    for name in BUILTIN_LOSSES:
        assert by[(name, "values vs reference")]["max_rel_error"] <= 1e-8
        assert by[(name, "values vs reference")]["tolerance"] == 1e-8
    assert by[("wml", "grad omega vs reference")]["max_rel_error"] <= 1e-8
    assert by[("mirror", "hypergradient vs reference")]["max_rel_error"] <= 1e-8
    assert by[("mirror", "step vs reference mirror_step")]["max_rel_error"] <= 1e-8
    assert by[("mirror", "hypergradient vs finite differences")]["max_rel_error"] <= 1e-6
    assert by[("uniform", "ω invariant")]["passed"] and by[("fixed", "ω invariant")]["passed"]
    for name in BUILTIN_LOSSES:
        assert by[(name, "finite on ±1e4 logits (bfloat16)")]["passed"]
    assert all(c["passed"] for c in checks)


# ------------------------------------------------------------------ broken plugins are caught

def _ce_rows(logits, labels):
    V = logits[0].shape[-1]
    y = labels.reshape(-1)
    keep = y != -100
    return [z.reshape(-1, V)[keep].double() for z in logits], y[keep]


class NoStopGradient:
    """KL to the other peers without detaching them: the targets get gradients too."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        zs, y = _ce_rows(logits, labels)
        per = []
        for i, z in enumerate(zs):
            kl = sum(omega[j] * F.kl_div(F.log_softmax(z, -1), F.log_softmax(zj, -1), log_target=True,
                                         reduction="batchmean") for j, zj in enumerate(zs) if j != i)
            per.append(F.cross_entropy(z, y) + kl)
        per = torch.stack(per)
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class MeanOverSequences:
    """Sums over tokens and divides by the number of sequences (method.md §10's defect)."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        per = torch.stack([F.cross_entropy(z.reshape(-1, z.shape[-1]).double(), labels.reshape(-1),
                                           reduction="sum") / z.shape[0] for z in logits])
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class NaiveSoftmax:
    """exp without subtracting the maximum: overflows on large logits."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        zs, y = _ce_rows(logits, labels)
        per = []
        for z, raw in zip(zs, logits):
            zz = z.to(raw.dtype)
            p = torch.exp(zz) / torch.exp(zz).sum(-1, keepdim=True)
            per.append(-torch.log(p.gather(-1, y[:, None])).mean())
        per = torch.stack(per)
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class Unnormalised:
    needs_validation = False

    def __init__(self, M):
        self.M = M

    def initial_omega(self):
        return uniform_omega(self.M)

    def step(self, ctx):
        return UpdateResult(omega=ctx.omega * 2.0)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class LeavesTrainMode(Unnormalised):
    def step(self, ctx):
        for p in ctx.peers:
            p.train(not p.training)
        return UpdateResult(omega=ctx.omega.clone())


class Raises(Unnormalised):
    def step(self, ctx):
        raise RuntimeError("boom in step")


class BrokenPlugins:
    @hookimpl
    def wml_register_losses(self, register):
        register("no-stop-grad", lambda cfg: NoStopGradient(), help="broken on purpose")
        register("seq-mean", lambda cfg: MeanOverSequences(), help="broken on purpose")
        register("naive-softmax", lambda cfg: NaiveSoftmax(), help="broken on purpose")

    @hookimpl
    def wml_register_updaters(self, register):
        register("unnormalised", lambda cfg, M: Unnormalised(M), help="broken on purpose")
        register("mode-changer", lambda cfg, M: LeavesTrainMode(M), help="broken on purpose")
        register("raises", lambda cfg, M: Raises(M), help="broken on purpose")


@pytest.fixture()
def broken_host():
    host = PluginHost()
    host.register(BrokenPlugins(), "broken_example")
    return host


def _verdicts(results: list[CheckResult]) -> dict:
    return {(r.name, r.check): r for r in results}


def test_broken_plugins_fail_the_right_checks(broken_host):
    old = torch.get_num_threads()
    results = run_checks(broken_host, names=["no-stop-grad", "seq-mean", "naive-softmax",
                                             "unnormalised", "mode-changer", "raises"])
    assert torch.get_num_threads() == old
    v = _verdicts(results)
    assert all(r.plugin == "broken_example" for r in results)
    assert not v[("no-stop-grad", "stop-gradient on targets")].passed
    assert v[("no-stop-grad", "grad logits vs finite differences (ω const)")].passed     # its own gradient is right
    assert not v[("seq-mean", "token mean (repeated, reshaped batch)")].passed
    assert v[("seq-mean", "ignored labels: no effect, no gradient")].passed
    assert not v[("naive-softmax", "finite on ±1e4 logits (float32)")].passed
    assert not v[("naive-softmax", "finite on ±1e4 logits (bfloat16)")].passed
    assert not v[("unnormalised", "step ω on simplex")].passed
    assert v[("unnormalised", "initial ω on simplex")].passed
    assert "train/eval" in v[("mode-changer", "peers untouched")].detail
    failed = [r for r in results if r.name == "raises" and not r.passed]
    assert failed and "boom in step" in failed[0].detail
    # no reference comparisons for third-party plugins: only generic checks
    assert not any("reference" in r.check for r in results)
    table = format_table(results)
    assert "loss:seq-mean" in table and "FAIL" in table


def test_cli_exit_status_and_json(broken_host, monkeypatch):
    runner = CliRunner()
    monkeypatch.setattr(plugins, "_HOST", broken_host)
    ok = runner.invoke(main, ["verify", "--json", "--only", "uniform", "--only", "ce"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["passed"] and {c["name"] for c in data["checks"]} == {"uniform", "ce"}
    bad = runner.invoke(main, ["verify", "--only", "seq-mean"])
    assert bad.exit_code == 1
    assert "FAIL" in bad.output and "token mean" in bad.output and "checks passed" in bad.output
    unknown = runner.invoke(main, ["verify", "--only", "nope"])
    assert unknown.exit_code == 2 and "no loss or updater named 'nope'" in unknown.output
