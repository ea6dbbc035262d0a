"""A misbehaving plugin fails loudly, early and in one line, naming itself.

Would catch: an updater whose ω leaves the simplex training happily (doubled KL terms), a loss
exception surfacing as a raw torch traceback, info keys overwriting logged fields or vanishing
silently, a factory that rejects its arguments only after the teacher has trained, a
``needs_validation = False`` updater being stepped, and one broken plugin breaking every command.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner
from run_helpers import read_metrics, tiny_config

from wml_framework import WMLTrainer, hookimpl
from wml_framework.api import UpdateResult, uniform_omega
from wml_framework.cli import main
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import PluginError, PluginHost


class Updater:
    needs_validation = True

    def __init__(self, num_peers, step_fn):
        self.num_peers, self.step_fn, self.steps = num_peers, step_fn, 0

    def initial_omega(self):
        return uniform_omega(self.num_peers)

    def step(self, ctx):
        self.steps += 1
        return self.step_fn(ctx)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class Silent(Updater):
    needs_validation = False


def run_with(tmp_path, corpus, provide, **changes):
    """A fresh host with the plugin ``provide(register, kind)`` describes, and a run to start."""
    class Plugin:
        @hookimpl
        def wml_register_losses(self, register):
            provide(register, "loss")

        @hookimpl
        def wml_register_updaters(self, register):
            provide(register, "updater")

    host = PluginHost()
    host.register(Plugin(), "misbehaving")
    cfg = tiny_config(corpus, host, max_steps=2, teacher_steps=2, blimp="", eval_interval=2, **changes)
    return host, lambda: WMLTrainer.from_config(cfg, tmp_path / "run", log=lambda m: None, host=host).train()


def test_an_updater_whose_omega_sums_to_two_stops_the_run_naming_it(tmp_path, corpus):
    def register(reg, kind):
        if kind == "updater":
            reg("doubler", lambda cfg, m: Updater(m, lambda ctx: UpdateResult(omega=ctx.omega * 2)))

    _, start = run_with(tmp_path, corpus, register, updater="doubler")
    with pytest.raises(PluginError, match=r"plugin 'misbehaving'.*updater 'doubler' step\(\).*sums to 2"):
        start()


@pytest.mark.parametrize("bad, problem", [
    (lambda ctx: UpdateResult(omega=torch.tensor([1.5, -0.5], dtype=torch.float64)), "negative weights"),
    (lambda ctx: UpdateResult(omega=torch.ones(3, dtype=torch.float64) / 3), r"shape \(3,\), expected \(2,\)"),
    (lambda ctx: ctx.omega, "expected an UpdateResult"),
])
def test_updater_output_is_checked_every_step(tmp_path, corpus, bad, problem):
    def register(reg, kind):
        if kind == "updater":
            reg("bad", lambda cfg, m: Updater(m, bad))

    _, start = run_with(tmp_path, corpus, register, updater="bad")
    with pytest.raises(PluginError, match=problem):
        start()


def test_a_non_finite_omega_skips_that_outer_step_and_keeps_omega(tmp_path, corpus):
    """NaN weights usually come from a diverging peer, not a buggy updater: the step is skipped."""
    calls = []

    def step(ctx):
        calls.append(1)
        if len(calls) == 1:
            return UpdateResult(omega=torch.tensor([float("nan"), 1.0], dtype=torch.float64))
        return UpdateResult(omega=torch.tensor([0.25, 0.75], dtype=torch.float64))

    def register(reg, kind):
        if kind == "updater":
            reg("flaky", lambda cfg, m: Updater(m, step))

    host, _ = run_with(tmp_path, corpus, register)
    lines = []
    WMLTrainer.from_config(tiny_config(corpus, host, max_steps=4, teacher_steps=2, blimp="", updater="flaky",
                                       outer_every=1), tmp_path / "run", log=lines.append, host=host).train()
    outer = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "outer"]
    assert "not finite" in outer[0]["skipped"] and outer[0]["omega"] == [0.5, 0.5]
    assert outer[1]["skipped"] is None and outer[1]["omega"] == [0.25, 0.75]
    assert any("outer step skipped" in line for line in lines)


def test_a_loss_that_raises_or_returns_the_wrong_type_is_named(tmp_path, corpus):
    class Raising:
        needs_teacher = False

        def __call__(self, logits, labels, omega, teacher_logits=None):
            return torch.nn.functional.linear(logits, torch.ones(2, 2))   # a TypeError deep in torch

    class WrongType:
        needs_teacher = False

        def __call__(self, logits, labels, omega, teacher_logits=None):
            return sum(z.sum() for z in logits)

    def register(reg, kind):
        if kind == "loss":
            reg("raising", lambda cfg: Raising())
            reg("wrong-type", lambda cfg: WrongType())

    _, start = run_with(tmp_path, corpus, register, loss="raising")
    with pytest.raises(PluginError, match=r"plugin 'misbehaving'.*loss 'raising' at run time.*TypeError"):
        start()
    _, start = run_with(tmp_path / "2", corpus, register, loss="wrong-type")
    with pytest.raises(PluginError, match="returned Tensor, expected a LossResult"):
        start()


def test_a_factory_that_rejects_its_arguments_fails_before_any_work(tmp_path, corpus):
    def register(reg, kind):
        if kind == "loss":
            def picky(cfg):
                raise ValueError("needs loss_alpha = 0.3")
            reg("picky", picky)

    _, start = run_with(tmp_path, corpus, register, loss="picky")
    with pytest.raises(PluginError, match="creating loss 'picky'.*needs loss_alpha = 0.3"):
        start()
    assert not (tmp_path / "run").exists()          # no folder, no tokenizer, no teacher training


def test_info_is_logged_under_its_own_key_and_unloggable_values_are_reported(tmp_path, corpus):
    def step(ctx):
        return UpdateResult(omega=ctx.omega.clone(), info={"omega": "not the real ω", "step": -1, "kind": "x",
                                                            "spread": [0.1, 0.2], "model": object()})

    def register(reg, kind):
        if kind == "updater":
            reg("chatty", lambda cfg, m: Updater(m, step))

    host, _ = run_with(tmp_path, corpus, register)
    lines = []
    cfg = tiny_config(corpus, host, max_steps=4, teacher_steps=2, blimp="", updater="chatty")
    WMLTrainer.from_config(cfg, tmp_path / "run", log=lines.append, host=host).train()
    outer = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "outer"]
    assert outer and all(r["omega"] != "not the real ω" and r["kind"] == "outer" and r["step"] > 0 for r in outer)
    assert outer[0]["info"] == {"omega": "not the real ω", "step": -1, "kind": "x", "spread": [0.1, 0.2]}
    notes = [line for line in lines if "info['model']" in line]
    assert len(notes) == 1 and "not loggable" in notes[0] and "'misbehaving'" in notes[0]


def test_an_updater_without_validation_is_never_stepped(tmp_path, corpus):
    made = []

    def register(reg, kind):
        if kind == "updater":
            def make(cfg, m):
                made.append(Silent(m, lambda ctx: UpdateResult(omega=ctx.omega)))
                return made[-1]
            reg("silent", make)

    host, _ = run_with(tmp_path, corpus, register)
    WMLTrainer.from_config(tiny_config(corpus, host, max_steps=4, teacher_steps=2, blimp="", updater="silent"),
                           tmp_path / "run", log=lambda m: None, host=host).train()
    assert made[-1].steps == 0
    assert not [r for r in read_metrics(tmp_path / "run") if r["kind"] == "outer"]


def test_verify_points_at_the_plugins_own_line_when_it_misuses_a_batch():
    class Misuse(Updater):
        def step(self, ctx):
            return UpdateResult(omega=torch.softmax(-torch.stack([
                ctx.forward(p, ctx.val.inputs).sum() for p in ctx.peers]).double(), 0))   # forgot for_peer(i)

    class Plugin:
        @hookimpl
        def wml_register_updaters(self, register):
            register("misuse", lambda cfg, m: Misuse(m, None))

    from wml_framework.verify import run_checks

    host = PluginHost()
    host.register(Plugin(), "misusing")
    failed = [r for r in run_checks(host, names=["misuse"]) if not r.passed]
    assert failed and "batch.for_peer(i)" in failed[0].detail and "test_plugin_guards.py" in failed[0].detail


BROKEN = "import no_such_module_for_wml_tests\n"


@pytest.fixture
def broken_installed(tmp_path, monkeypatch):
    (tmp_path / "fake_wml_broken.py").write_text(BROKEN)
    info = tmp_path / "fake_wml_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-wml-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[wml]\nbroken_one = fake_wml_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_HOST", None)
    yield
    sys.modules.pop("fake_wml_broken", None)


@pytest.mark.parametrize("args", [["plugins"], ["config"], ["run", "--help"], ["verify", "--only", "ce"]])
def test_one_broken_plugin_costs_one_line_and_breaks_no_command(broken_installed, args):
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    broken = [line for line in result.output.splitlines() if "broken_one" in line]
    assert len(broken) == 1 and "fake-wml-broken 1.0" in broken[0] and "no_such_module_for_wml_tests" in broken[0]
    if args == ["plugins"]:
        assert "mirror" in result.output and "not loaded" in result.output


def test_plugins_json_lists_the_broken_plugin(broken_installed):
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).output)
    assert [f["plugin"] for f in data["failed"]] == ["broken_one"]
    assert "wml" in {r["name"] for r in data["plugins"]["loss"]}


def test_a_plugin_error_during_a_cli_run_is_one_line(tmp_path, corpus, monkeypatch):
    class Plugin:
        @hookimpl
        def wml_register_updaters(self, register):
            register("doubler", lambda cfg, m: Updater(m, lambda ctx: UpdateResult(omega=ctx.omega * 2)))

    host = PluginHost()
    host.register(Plugin(), "misbehaving")
    monkeypatch.setattr(plugins, "_HOST", host)
    cfg_file = tmp_path / "c.toml"
    values = tiny_config(corpus, host, max_steps=2, teacher_steps=2, blimp="", updater="doubler", outer_every=1).to_dict()
    values.pop("plugins")
    cfg_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    result = CliRunner().invoke(main, ["run", "--config", str(cfg_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "updater 'doubler'" in errors[0] and "Traceback" not in result.output



def test_an_initial_omega_off_the_simplex_is_refused_before_training(tmp_path, corpus):
    def register(reg, kind):
        if kind == "updater":
            class Doubled(Silent):
                def initial_omega(self):
                    return uniform_omega(self.num_peers) * 2
            reg("doubled-start", lambda cfg, m: Doubled(m, None))

    _, start = run_with(tmp_path, corpus, register, updater="doubled-start")
    with pytest.raises(PluginError, match=r"updater 'doubled-start' initial_omega\(\).*sums to 2"):
        start()


def test_an_evaluation_that_fails_after_training_keeps_the_run_and_says_how_to_finish(tmp_path, corpus, monkeypatch):
    class Failing:
        @hookimpl
        def wml_register_evaluators(self, register):
            def make(cfg):
                return lambda model, tok, **_: (_ for _ in ()).throw(ValueError("cannot score this"))
            register("failing", make)

    host = PluginHost()
    host.register(Failing(), "failing-evaluator")
    monkeypatch.setattr(plugins, "_HOST", host)
    cfg_file = tmp_path / "c.toml"
    values = tiny_config(corpus, host, max_steps=2, teacher_steps=2, blimp="").to_dict()
    values.pop("plugins")
    cfg_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--config", str(cfg_file), "--out", str(run)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "cannot score this" in errors[0]
    assert f"wml eval {run} && wml report {run}" in errors[0]
    assert (run / "summary.json").is_file() and (run / "report.md").is_file() and not (run / "eval.json").exists()


# ------------------------------------------------------------------ the contract's attributes, read through the guard

def _entry(kind: str, name: str):
    from wml_framework.plugin_system.host import Entry

    return Entry(kind, name, object, "contract-test", "(registered in code)")


def test_the_guard_gives_every_optional_updater_attribute_its_declared_default():
    """An updater declaring only what is required reads, through its guard, as api.Updater says an
    absent attribute does; one that declares them is read as it says.

    Would catch: the run asking an updater for an attribute the contract does not give a default
    (an AttributeError in the middle of a run), or a guard that hides what the plugin declared."""
    from wml_framework.api import Updater as UpdaterProtocol
    from wml_framework.plugin_system.guards import checked_updater

    plain = checked_updater(Updater(2, None), _entry("updater", "plain"), 2)
    assert (plain.uses_inner_gradients, plain.uses_preconditioner, plain.notes) == (
        UpdaterProtocol.uses_inner_gradients, UpdaterProtocol.uses_preconditioner, [])
    assert (plain.uses_inner_gradients, plain.uses_preconditioner) == (False, False)

    class Eager(Updater):
        uses_inner_gradients = True
        uses_preconditioner = True
        notes = ["eager: ignores omega_lr"]

    eager = checked_updater(Eager(2, None), _entry("updater", "eager"), 2)
    assert (eager.uses_inner_gradients, eager.uses_preconditioner, eager.notes) == (True, True, ["eager: ignores omega_lr"])


def test_the_guard_forwards_a_losss_contract_and_its_fast_paths():
    """Would catch: ``mixed_from_logit_grads`` missing on a loss that does not set it (the
    hypergradient would then have to guess), or a fast path the guard fails to pass on."""
    from wml_framework.plugin_system.guards import checked_loss

    class Plain:
        needs_teacher = 1          # truthy, read as a bool

        def __call__(self, logits, labels, omega, teacher_logits=None):
            raise AssertionError("not called")

    class Fast(Plain):
        needs_teacher = False
        mixed_from_logit_grads = True

        def logit_grads(self, logits, labels, omega, teacher_logits=None):
            return "fast"

    plain, fast = checked_loss(Plain(), _entry("loss", "plain")), checked_loss(Fast(), _entry("loss", "fast"))
    assert plain.needs_teacher is True and plain.mixed_from_logit_grads is False
    assert getattr(plain, "logit_grads", None) is None
    assert fast.needs_teacher is False and fast.mixed_from_logit_grads is True
    assert fast.logit_grads(None, None, None) == "fast"


def test_an_updaters_own_notes_and_the_guards_are_each_logged_once(tmp_path):
    """Would catch: the run reading notes only from the guard (a plugin's own warnings lost), or
    logging a note at every outer step."""
    from run_helpers import tiny_loop

    from wml_framework.plugin_system.guards import checked_updater

    class Noting(Updater):
        notes: list = []

        def step(self, ctx):
            if not self.notes:
                self.notes = ["noting: a fallback was taken"]
            return UpdateResult(omega=uniform_omega(2), info={"unloggable": object()})

    _, _, loop = tiny_loop(tmp_path)
    loop.updater = checked_updater(Noting(2, None), _entry("updater", "noting"), 2)
    lines = []
    loop.log = lines.append
    for _ in range(2):
        _, last = loop.accumulate()
        loop.outer_step(last)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 2, lines
    assert "noting: a fallback was taken" in warnings[0] and "info['unloggable']" in warnings[1]


@pytest.mark.parametrize("omega", [
    torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.5, 0.5 + 5e-7], dtype=torch.float64),
    torch.tensor([0.5, 0.5 + 5e-6], dtype=torch.float64), torch.tensor([1.5, -0.5], dtype=torch.float64),
    torch.tensor([float("nan"), 1.0], dtype=torch.float64), torch.ones(3, dtype=torch.float64) / 3, [0.5, 0.5],
], ids=["uniform", "within-tolerance", "sums-off", "negative", "nan", "wrong-shape", "not-a-tensor"])
def test_a_run_and_wml_verify_accept_and_refuse_the_same_omega_in_the_same_words(omega):
    """Would catch: the two checks drifting apart (a tolerance, a check only one of them makes), so
    that ``wml verify`` passes an updater whose ω the run then refuses, or the reverse."""
    from wml_framework.plugin_system.guards import check_simplex as run_check
    from wml_framework.verify.loss_checks import Failed
    from wml_framework.verify.updater_checks import check_simplex as verify_check

    try:
        run_check(omega, 2, _entry("updater", "u"), "step()")
        run_problem = None
    except PluginError as exc:
        run_problem = exc.problem
    try:
        verify_check(omega, 2, "step().omega")
        verify_problem = None
    except Failed as exc:
        verify_problem = str(exc)
    assert (run_problem is None) == (verify_problem is None), (run_problem, verify_problem)
    assert run_problem is None or run_problem in verify_problem
