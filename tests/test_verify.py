"""``wml verify``: every built-in passes (as a real subprocess, the acceptance command), and
deliberately broken third-party plugins fail the check that describes their defect."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from wml_framework import hookimpl
from wml_framework.api import LossResult, UpdateResult, uniform_omega
from wml_framework.cli import main
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import PluginHost
from wml_framework.verify import CheckResult, format_table, run_checks
from wml_framework.verify.problems import MASKED

BUILTIN_LOSSES = ("wml", "kd", "ce")
BUILTIN_UPDATERS = ("mirror", "uniform", "fixed")


@pytest.fixture(scope="module")
def full_run():
    """``wml verify --json`` over everything registered, run once as a real process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "verify", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    return proc


@pytest.mark.slow
def test_every_builtin_passes(full_run):
    assert full_run.returncode == 0, full_run.stdout[-3000:] + full_run.stderr[-3000:]
    data = json.loads(full_run.stdout)
    assert data["passed"] is True and data["failed"] == 0
    checks = data["checks"]
    names = {(c["kind"], c["name"]) for c in checks}
    assert {("loss", n) for n in BUILTIN_LOSSES} <= names
    assert {("updater", n) for n in BUILTIN_UPDATERS} <= names
    by = {(c["name"], c["check"].split(": ")[-1] if c["check"].startswith("reference") else c["check"]): c
          for c in checks}
    refs = {c["name"]: [] for c in checks}
    for c in checks:
        if c["check"].startswith("reference"):
            refs[c["name"]].append(c)
    # every built-in is compared with wml_reference through the reference points it declares, at 1e-8
    for name in BUILTIN_LOSSES:
        assert by[(name, "per_peer")]["max_rel_error"] <= 1e-8 and by[(name, "per_peer")]["tolerance"] == 1e-8
        assert by[(name, "grad_logits (ω const)")]["max_rel_error"] <= 1e-8
        assert by[(name, "finite on ±1e4 logits (bfloat16)")]["passed"]
    assert by[("wml", "grad_omega")]["max_rel_error"] <= 1e-8
    assert by[("wml", "grad_logits (logit_grads)")]["max_rel_error"] <= 1e-8
    mirror = {c["check"]: c for c in refs["mirror"]}
    assert any("exact hypergradient" in k and k.endswith(": grad") and v["max_rel_error"] <= 1e-8 for k, v in mirror.items())
    assert any(k.endswith(": eta") for k in mirror)
    assert any("exact_adam" in k and k.endswith(": grad") and v["max_rel_error"] <= 1e-8 and v["tolerance"] == 1e-8
               for k, v in mirror.items())
    assert any("finite differences" in k and v["tolerance"] == 1e-6 for k, v in mirror.items())
    assert refs["uniform"] and refs["fixed"]
    assert all(c["passed"] for c in checks)
    # … and every check of every loss and of every stepped updater again on masked labels (issue 22)
    for name in BUILTIN_LOSSES + ("mirror",):
        rows = [c["check"] for c in checks if c["name"] == name]
        masked = [c for c in rows if c.endswith(MASKED)]
        if name != "mirror":
            assert {c + MASKED for c in rows if not c.endswith(MASKED) and not c.startswith("all labels")} == set(masked)
        assert any(c.startswith("reference") for c in masked) and any(c.startswith("all labels ignored") for c in rows)
    for name in BUILTIN_LOSSES:
        assert by[(name, "per_peer" + MASKED)]["max_rel_error"] <= 1e-8
        assert by[(name, "grad_logits (ω const)" + MASKED)]["max_rel_error"] <= 1e-8
    mirror_masked = {k: v for k, v in mirror.items() if k.endswith(MASKED)}
    assert any("exact hypergradient" in k and k.endswith(": grad" + MASKED) and v["max_rel_error"] <= 1e-8
               for k, v in mirror_masked.items())
    assert any("finite differences" in k and v["tolerance"] == 1e-6 for k, v in mirror_masked.items())


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
    needs_validation = True

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
    # they declared no reference points, so only generic checks ran
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


# ------------------------------------------------------------------ the blind spots of the first verify

class OffsetAtUnitTemperature:
    """The built-in wml loss plus 0.05 nats of CE, but only at T = 1 (the default temperature)."""

    needs_teacher = False

    def __init__(self, cfg):
        from wml_plugins.losses.wml import WMLLoss

        self.inner, self.cfg = WMLLoss.from_config(cfg), cfg

    def __call__(self, logits, labels, omega, teacher_logits=None):
        out = self.inner(logits, labels, omega)
        if self.cfg.temperature != 1.0:
            return out
        bump = 0.05 * (1.0 - self.cfg.loss_alpha)
        return LossResult(out.total + bump * len(logits), out.per_peer + bump, out.ce + 0.05, out.kl)


def _three_percent_off_grad(z, y, n):
    """∂CE/∂z, 3% too large: the helper SharedWrongHelper's backward and logit_grads share."""
    g = torch.softmax(z, -1)
    g[torch.arange(len(y)), y] -= 1.0
    return 1.03 * g / n


class SharedWrongHelper:
    """A loss whose backward and whose ``logit_grads`` share one helper that is 3% off: comparing
    the two with each other reports 0, comparing either with finite differences does not."""

    needs_teacher = False

    class _CE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, y, n):
            ctx.save_for_backward(z, y)
            ctx.n = n
            return F.cross_entropy(z, y, reduction="sum") / n

        @staticmethod
        def backward(ctx, g):
            z, y = ctx.saved_tensors
            return g * _three_percent_off_grad(z, y, ctx.n), None, None

    def __call__(self, logits, labels, omega, teacher_logits=None):
        zs, y = _ce_rows(logits, labels)
        per = torch.stack([self._CE.apply(z, y, len(y)) for z in zs])
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))

    def logit_grads(self, logits, labels, omega, teacher_logits=None):
        out = []
        for z in logits:
            V = z.shape[-1]
            flat, y = z.reshape(-1, V).double(), labels.reshape(-1)
            keep = y != -100
            g = torch.zeros_like(flat)
            g[keep] = _three_percent_off_grad(flat[keep], y[keep], int(keep.sum()))
            out.append(g.view_as(z).to(z.dtype))
        return out


def _constant_eta_mirror(cfg, num_peers):
    from wml_plugins.updaters.mirror import MirrorUpdater

    upd = MirrorUpdater.from_config(cfg, num_peers)
    upd.eta = lambda outer_step: upd.omega_lr   # the schedule ignored
    return upd


class BlindSpots:
    @hookimpl
    def wml_register_losses(self, register):
        from wml_framework.api import ReferencePoint
        from wml_plugins.losses import references as loss_refs

        register("offset-at-t1", OffsetAtUnitTemperature, references=[ReferencePoint("= wml_reference", loss_refs.wml)])
        register("shared-helper", lambda cfg: SharedWrongHelper())

    @hookimpl
    def wml_register_updaters(self, register):
        from wml_framework.api import ReferencePoint
        from wml_plugins.updaters import references as upd_refs

        register("constant-eta", _constant_eta_mirror,
                 references=[ReferencePoint("= wml_reference", upd_refs.mirror_exact, {"loss": "wml"})])


def test_mutations_that_passed_the_first_verify_now_fail_it():
    """Would catch: loss values compared at T ≠ 1 only; a fast path compared with the code it shares;
    η compared with what the updater itself reports (each mutation passed the earlier ``wml verify``)."""
    host = PluginHost()
    host.register(BlindSpots(), "blind_spots")
    v = _verdicts(run_checks(host, names=["offset-at-t1", "shared-helper", "constant-eta"]))
    assert not v[("offset-at-t1", "reference: = wml_reference: per_peer")].passed
    assert not v[("offset-at-t1", "reference: = wml_reference: ce")].passed
    assert not v[("shared-helper", "logit_grads vs finite differences")].passed
    assert not v[("constant-eta", "reference: = wml_reference: eta")].passed
    assert not v[("constant-eta", "reference: = wml_reference: omega")].passed
    assert v[("constant-eta", "reference: = wml_reference: grad")].passed   # the gradient itself is right


def _adam_variant(broken: str):
    """``exact_adam`` with one plausible defect: ``sgd`` takes the SGD virtual step (the preconditioner
    ignored), ``sqrt`` uses √D (a preconditioner built from √v instead of v)."""
    def make(cfg, num_peers):
        from wml_framework.api import AdamPreconditioner
        from wml_plugins.updaters.mirror import MirrorUpdater

        upd = MirrorUpdater(num_peers, omega_lr=cfg.omega_lr, omega_min_lr=cfg.omega_min_lr,
                            omega_warmup_iters=cfg.omega_warmup_iters, omega_decay_iters=cfg.omega_decay_iters,
                            hypergradient="exact" if broken == "sgd" else "exact_adam")
        real = upd.step

        def step(ctx):
            if broken == "sqrt":
                ctx = dataclasses.replace(ctx, preconditioner=AdamPreconditioner(
                    [[d.sqrt() for d in diag] for diag in ctx.preconditioner.diag]))
            result = real(ctx)
            result.info["hypergradient"] = "exact_adam"
            return result

        upd.step = step
        return upd
    return make


class BrokenAdam:
    @hookimpl
    def wml_register_updaters(self, register):
        from wml_framework.api import ReferencePoint
        from wml_plugins.updaters import references as upd_refs

        for name in ("sgd", "sqrt"):
            register(f"adam-{name}", _adam_variant(name), references=[
                ReferencePoint("= wml_reference", upd_refs.mirror_exact_adam, {"loss": "wml"}),
                ReferencePoint("= differences", upd_refs.mirror_exact_adam_finite_differences, {"loss": "wml"},
                               tolerance=1e-6)])


def test_broken_adam_aware_hypergradients_fail_verify():
    """The exact_adam reference points catch an SGD virtual step and a wrongly built preconditioner."""
    host = PluginHost()
    host.register(BrokenAdam(), "broken_adam")
    v = _verdicts(run_checks(host, names=["adam-sgd", "adam-sqrt"]))
    for name in ("adam-sgd", "adam-sqrt"):
        assert not v[(name, "reference: = wml_reference: grad")].passed
        assert not v[(name, "reference: = differences: grad")].passed
        assert v[(name, "reference: = wml_reference: eta")].passed


# ------------------------------------------------------------------ what a reference point's settings hide

class WMLWithoutTSquared:
    """The WML loss with its KL term missing the T² factor, in plain torch (so every generic check
    passes): right at T = 1 only."""

    needs_teacher = False

    def __init__(self, cfg):
        self.alpha, self.T = cfg.loss_alpha, cfg.temperature

    def __call__(self, logits, labels, omega, teacher_logits=None):
        zs, y = _ce_rows(logits, labels)
        n, w, T = max(len(y), 1), omega.double(), self.T
        targets = [F.log_softmax(z.detach() / T, -1) for z in zs]
        per, ce, kl = [], [], []
        for i, z in enumerate(zs):
            ce_i = F.cross_entropy(z, y, reduction="sum") / n
            log_s = F.log_softmax(z / T, -1)
            kl_i = torch.zeros((), dtype=z.dtype)
            for j, q in enumerate(targets):
                if j != i:
                    kl_i = kl_i + w[j] * (q.exp() * (q - log_s)).sum() / n      # no * T * T
            per.append((1 - self.alpha) * ce_i + self.alpha * kl_i)
            ce.append(ce_i.detach())
            kl.append(kl_i.detach())
        per = torch.stack(per)
        return LossResult(per.sum(), per, torch.stack(ce), torch.stack(kl))


def _wml_at_unit_temperature(p) -> dict:
    """A point written for T = 1 only: its values do not change with the configured temperature."""
    import wml_reference as R

    return {"per_peer": R.wml_losses(p.logits, p.labels, p.omega, p.config.loss_alpha, 1.0)}


class PinnedPoints:
    @hookimpl
    def wml_register_losses(self, register):
        from wml_framework.api import ReferencePoint
        from wml_plugins.losses import references as loss_refs
        from wml_plugins.losses.wml import WMLLoss

        pinned = ReferencePoint("= wml_reference", loss_refs.wml, {"temperature": 1.0})   # the docs' old example
        register("no-t-squared", WMLWithoutTSquared, references=[pinned])
        register("wml-pinned", WMLLoss.from_config, references=[
            pinned, ReferencePoint("written for T = 1", _wml_at_unit_temperature, {"temperature": 1.0})])


def test_a_reference_point_pinning_the_temperature_still_catches_a_missing_t_squared():
    """Would catch (issue 21 §7): a point that pins ``"temperature": 1.0`` stopping verify from
    varying T, so that a loss without its T² passed every check. A point that computes with T is
    checked at verify's other temperatures too; one written for T = 1 only keeps its pin (no false
    failure) and verify says what went unchecked."""
    from wml_framework.verify import unverified

    host = PluginHost()
    host.register(PinnedPoints(), "pinned_points")
    results = run_checks(host, names=["no-t-squared", "wml-pinned"])
    v = _verdicts(results)
    generic = [r for r in results if r.name == "no-t-squared" and not r.check.startswith("reference")]
    assert generic and all(r.passed for r in generic)                       # self-consistent, as the issue says
    for part in ("per_peer", "kl", "grad_logits (ω const)", "grad_omega"):
        assert not v[("no-t-squared", f"reference: = wml_reference: {part}")].passed, part
    assert v[("no-t-squared", "reference: = wml_reference: ce")].passed
    assert "temperature=1.0," not in v[("no-t-squared", "reference: = wml_reference: per_peer")].detail  # found at T ≠ 1
    right = [r for r in results if r.name == "wml-pinned"]
    assert right and all(r.passed for r in right), [(r.check, r.detail) for r in right if not r.passed]
    notes = unverified(results, host)
    assert any("'wml-pinned'" in n and "'written for T = 1' pins temperature = 1.0" in n and "checked at temperature = 1.0 only" in n
               for n in notes), notes
    assert any("'no-t-squared'" in n and "computes with it" in n for n in notes), notes


class CountingUpdater:
    """ω = uniform at its first step, then ever further from it: a reused updater would show."""

    needs_validation = True

    def __init__(self, num_peers):
        self.num_peers, self.calls = num_peers, 0

    def initial_omega(self):
        return uniform_omega(self.num_peers)

    def step(self, ctx):
        self.calls += 1
        w = torch.arange(1, self.num_peers + 1, dtype=torch.float64) ** (self.calls - 1)
        return UpdateResult(omega=w / w.sum(), info={"calls": self.calls})

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def _first_step_of_a_fresh_updater(problem) -> dict:
    import numpy as np

    M = len(problem.weights)
    return {"omega": np.full(M, 1.0 / M), "info": {"calls": 1}}


class Counting:
    @hookimpl
    def wml_register_updaters(self, register):
        from wml_framework.api import ReferencePoint

        register("counting", lambda cfg, M: CountingUpdater(M),
                 references=[ReferencePoint("first step", _first_step_of_a_fresh_updater)])


def test_every_updater_reference_point_is_checked_on_a_fresh_updater():
    """docs/plugins.md §10 promises it: each problem (each M, each outer step) gets a new updater,
    so a point describes one step from the initial state."""
    host = PluginHost()
    host.register(Counting(), "counting")
    v = _verdicts(run_checks(host, names=["counting"]))
    assert v[("counting", "reference: first step: omega")].passed
    assert v[("counting", "reference: first step: omega")].max_rel_error == 0.0


# ------------------------------------------------------------------ masked labels (issue 22)

class MeanOverAllPositions:
    """CE summed over the scored tokens but divided by every position B·T, scored or not: right when
    nothing is ignored, self-consistent, and ignored logits get no gradient. Masked LM scores 15%."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        zs, y = _ce_rows(logits, labels)
        per = torch.stack([F.cross_entropy(z, y, reduction="sum") / labels.numel() for z in zs])
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class PerSequenceMeans:
    """Per-sequence token means, re-weighted by each sequence's share of the scored tokens: equal to
    the token mean, except that a sequence with no scored token gives 0/0 = NaN (masked LM draws those)."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        keep = labels != -100
        n_b = keep.sum(-1).double()
        per = []
        for z in logits:
            logp = F.log_softmax(z.double(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            seq_mean = -(logp * keep).sum(-1) / n_b
            per.append((seq_mean * n_b).sum() / n_b.sum().clamp(min=1))
        per = torch.stack(per)
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class DividesByN:
    """The token mean without the ``max(n, 1)``: NaN on a batch with no scored position."""

    needs_teacher = False

    def __call__(self, logits, labels, omega, teacher_logits=None):
        zs, y = _ce_rows(logits, labels)
        per = torch.stack([F.cross_entropy(z, y, reduction="sum") / len(y) for z in zs])
        return LossResult(per.sum(), per, per.detach(), torch.zeros_like(per.detach()))


class MeanOfHeldOutCE(Unnormalised):
    """Moves ω by the held-out CE of each peer, a mean over the scored tokens without ``max(n, 1)``."""

    def step(self, ctx):
        y = ctx.val.labels.reshape(-1)
        keep = y != -100
        ces = [F.cross_entropy(p(ctx.val.for_peer(i))[keep], y[keep], reduction="sum") / int(keep.sum())
               for i, p in enumerate(ctx.peers)]
        w = ctx.omega * torch.exp(-torch.stack(ces).detach().double())
        return UpdateResult(omega=w / w.sum())


class MaskedBugs:
    @hookimpl
    def wml_register_losses(self, register):
        register("all-positions", lambda cfg: MeanOverAllPositions(), help="broken on purpose")
        register("per-sequence", lambda cfg: PerSequenceMeans(), help="broken on purpose")
        register("divides-by-n", lambda cfg: DividesByN(), help="broken on purpose")

    @hookimpl
    def wml_register_updaters(self, register):
        register("held-out-ce", lambda cfg, M: MeanOfHeldOutCE(M), help="broken on purpose")


def test_masked_label_bugs_fail_the_masked_checks():
    """Would catch (each a loss or updater without reference points, so only generic checks can):
    a mean over every position instead of the scored ones; per-sequence means that turn a sequence
    with no scored token into NaN (which the dense problems never contain); a division by n = 0
    in a loss or in an updater's step."""
    host = PluginHost()
    host.register(MaskedBugs(), "masked_bugs")
    v = _verdicts(run_checks(host, names=["all-positions", "per-sequence", "divides-by-n", "held-out-ce"]))
    for tag in ("", MASKED):
        assert not v[("all-positions", "ignored labels: not counted (padded batch)" + tag)].passed
        assert v[("all-positions", "ignored labels: no effect, no gradient" + tag)].passed
        assert v[("all-positions", "grad logits vs finite differences (ω const)" + tag)].passed
    per_sequence = [r.check for r in v.values() if r.name == "per-sequence" and not r.passed]
    assert "ignored labels: no effect, no gradient" + MASKED in per_sequence     # NaN where a sequence has none
    assert all(c.endswith(MASKED) or c.startswith("all labels ignored") for c in per_sequence), per_sequence
    failed = [r.check for r in v.values() if r.name == "divides-by-n" and not r.passed]
    assert failed == ["all labels ignored: finite, no gradient"], failed
    failed = [r.check for r in v.values() if r.name == "held-out-ce" and not r.passed]
    assert failed == ["all labels ignored (train or held-out batch): finite step on simplex"], failed


def test_every_check_of_a_loss_runs_again_on_masked_labels():
    """The masked-label rows mirror the dense ones one for one (reference points included), and the
    masked problems are what they claim: about 15% scored, a sequence with none, n = 1 for some M."""
    from wml_framework.verify.problems import ONE_SCORED, PEER_COUNTS, loss_cases

    checks = [r.check for r in run_checks(PluginHost(), names=["ce"])]
    dense = [c for c in checks if not c.endswith(MASKED) and not c.startswith("all labels")]
    assert [c + MASKED for c in dense] == [c for c in checks if c.endswith(MASKED)]
    assert any(c.startswith("reference") for c in dense) and "all labels ignored: finite, no gradient" in checks
    scored = [(case.labels != -100) for case in loss_cases(0, masked=True)]
    assert all(not bool(s[0].any()) for s in scored)                         # a sequence with nothing scored
    assert all(int(s.sum()) == 1 for s, M in zip(scored, PEER_COUNTS) if M in ONE_SCORED)
    assert 0.05 < sum(int(s.sum()) for s in scored) / sum(s.numel() for s in scored) < 0.2
