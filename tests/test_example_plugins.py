"""The third-party example package in docs/examples/wml-example-plugins: one plugin of every kind,
written against ``wml_framework.api`` alone and found through entry points, as an installed package is.

Fast tests put the example's source on the path beside a dist-info holding its entry points (what
``pip install -e`` leaves behind); slow ones ``pip install`` it for real and drive the command line.

Would catch: the core naming a built-in (a teacher family from a fixed list, an FFN rule for one
family, evaluator names special-cased), options that never reach a factory, events named unlike the
records they announce, and a loss whose formula is wrong while its gradients are self-consistent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner
from run_helpers import TINY, read_metrics

from wml_framework.cli import main
from wml_framework.plugin_system import host as plugins
from wml_framework.plugin_system.host import PluginHost
from wml_framework.verify import run_checks

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "wml-example-plugins"
META = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
ENTRY_POINTS = META["project"]["entry-points"]["wml"]


def _forget_example_modules():
    for name in [m for m in sys.modules if m.startswith("wml_example_plugins")]:
        del sys.modules[name]


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The example's source on sys.path with a dist-info naming its entry points; a fresh CLI host."""
    site = tmp_path / "site"
    info = site / "wml_example_plugins-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wml-example-plugins\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[wml]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("WML_EXAMPLE_EVENT_LOG", str(tmp_path / "events.jsonl"))
    monkeypatch.setattr(plugins, "_HOST", None)
    _forget_example_modules()
    yield tmp_path
    _forget_example_modules()


def _run_args(corpus: Path, out: Path, **extra) -> list[str]:
    values = {**TINY, "max_steps": 6, "lr_decay_iters": 6, "teacher_n_layer": 3, "blimp": "none", **extra}
    args = ["run", "--corpus", str(corpus), "--out", str(out)]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def test_every_kind_is_listed_with_its_package_and_options(example):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {(kind, r["name"]): r for kind, entries in data["plugins"].items() for r in entries}
    for kind, name in [("loss", "focal_wml"), ("updater", "softmax_ema"), ("family", "mistral"),
                       ("initializer", "shallow"), ("evaluator", "top1")]:
        assert rows[(kind, name)]["package"] == "wml-example-plugins 0.1.0", (kind, name)
    assert rows[("loss", "focal_wml")]["options"] == {"gamma": 2.0}
    assert rows[("updater", "softmax_ema")]["options"] == {"decay": 0.9, "tau": 1.0}
    assert len(rows[("loss", "focal_wml")]["references"]) == 2
    assert data["failed"] == [] and data["notes"] == []


def test_a_run_made_of_the_example_plugins_with_options_from_the_command_line(example, corpus):
    out = example / "run"
    args = _run_args(corpus, out, teacher_family="mistral", **{"focal_wml.gamma": 1.5, "softmax_ema.tau": 0.5,
                                                                 "softmax_ema.decay": 0.5})
    result = CliRunner().invoke(main, [*args, "--init", "shallow", "--loss", "focal_wml", "--updater", "softmax_ema"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"] == {"init": "shallow", "updater": "softmax_ema", "loss": "focal_wml", "hypergradient": "exact",
                                 "objective": "causal"}
    assert json.loads((out / "teacher" / "config.json").read_text())["model_type"] == "mistral"
    assert json.loads((out / "init_trace.json").read_text())["initializer"] == "shallow"
    outer = [r for r in read_metrics(out) if r["kind"] == "outer"]
    assert outer and all(r["eta"] == 0.5 and len(r["info"]["ema"]) == 2 for r in outer)   # decay 0.5 arrived
    assert max(abs(w - 0.5) for w in summary["omega"]) > 1e-3
    saved = (out / "config.toml").read_text()
    assert "[plugins.focal_wml]" in saved and "gamma = 1.5" in saved and "tau = 0.5" in saved
    evaluation = json.loads((out / "eval.json").read_text())
    assert 0 <= evaluation["models"]["ensemble"]["top1"]["accuracy"] <= 1 and evaluation["top1"]["max_blocks"] == 8
    assert "perplexity" in evaluation["models"]["peer_0"]        # the built-in evaluators run beside it
    events = [json.loads(line) for line in (example / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events if e["event"] != "phase"]
    assert names[0] == "run_start" and names[-1] == "run_end" and "checkpoint" in names
    phases = [e for e in events if e["event"] == "phase"]
    assert len(phases) == 7 and events[0]["event"] == "phase"
    assert all(e["kind"] == e["event"] for e in events if e["event"] in ("train", "outer", "eval"))
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 7))


def test_verify_checks_the_examples_against_their_reference_points(example):
    results = run_checks(PluginHost(), names=["focal_wml", "softmax_ema"])
    failed = [(r.name, r.check, r.detail) for r in results if not r.passed]
    assert not failed, failed
    refs = {r.check for r in results if r.check.startswith("reference")}
    assert any("gamma = 0 equals wml_reference" in c and c.endswith("per_peer") for c in refs)
    assert any("gamma = 2: focal CE term" in c for c in refs)
    assert any("first step: softmax" in c and c.endswith("omega") for c in refs)


def test_the_example_updater_reports_the_outer_objective_of_the_contract(example):
    """``softmax_ema`` computes L_2 with ``wml_framework.api.ensemble_loss`` (what a third-party
    updater has, where the built-in ``mirror`` has the same): its ``val_loss`` is the NumPy oracle's
    ensemble loss of the held-out batch at the ω the step started from.

    Would catch: an outer objective a plugin cannot reach through the contract, or one that differs
    from wml_reference's (a mixture of probabilities instead of logits, ω ignored, a sum for a mean)."""
    import torch
    from wml_example_plugins.softmax_ema import make_softmax_ema

    import wml_reference as R
    from wml_framework.verify.problems import make_config, outer_case

    for M in (1, 3):
        cfg = make_config(M)
        case = outer_case(M, PluginHost().create("loss", "wml", cfg), torch.Generator().manual_seed(M))
        result = make_softmax_ema(cfg, M, decay=0.9, tau=1.0).step(case.ctx)
        p = case.as_problem(cfg, {})
        expected = R.ensemble_loss([x @ W for x, W in zip(p.x_val, p.weights)], p.y_val, p.omega)
        assert result.val_loss == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("mutation, failing", [
    ("KL_SIGN = 1.0", "gamma = 0 equals wml_reference"),                 # the wrong-signed KL
    pytest.param("kl_i = kl_i + w[j] *", "gamma = 0 equals wml_reference", marks=pytest.mark.slow),  # ω ignored
    pytest.param("* (T * T) / n", "gamma = 0 equals wml_reference", marks=pytest.mark.slow),         # T² dropped
    ("torch.pow(1.0 - log_p.exp(), self.gamma)", "gamma = 2: focal CE term"),   # γ ignored
    ("ce.append(focal.detach())", "gamma = 0 equals wml_reference.wml_losses: ce"),  # the loss reported as its CE
])
def test_a_wrong_formula_fails_verify_only_through_a_reference_point(example, tmp_path, mutation, failing):
    """Each mutant keeps its gradients consistent with its own values, so every generic check passes;
    only the reference points the plugin declared can tell it computes the wrong function."""
    replacement = {"KL_SIGN = 1.0": "KL_SIGN = -1.0", "kl_i = kl_i + w[j] *": "kl_i = kl_i + (1.0 / len(zs)) *",
                   "* (T * T) / n": "/ n", "torch.pow(1.0 - log_p.exp(), self.gamma)": "torch.ones_like(log_p)",
                   "ce.append(focal.detach())": "ce.append(per_peer[-1].detach())"}
    src = EXAMPLE / "src" / "wml_example_plugins" / "focal_loss.py"
    text = src.read_text()
    assert mutation in text
    mutant = tmp_path / "mutant"
    shutil.copytree(EXAMPLE / "src" / "wml_example_plugins", mutant / "wml_example_plugins")
    (mutant / "wml_example_plugins" / "focal_loss.py").write_text(text.replace(mutation, replacement[mutation]))
    sys.path.insert(0, str(mutant))
    _forget_example_modules()
    try:
        results = run_checks(PluginHost(), names=["focal_wml"])
    finally:
        sys.path.remove(str(mutant))
    generic = [r for r in results if not r.check.startswith("reference")]
    assert generic and all(r.passed for r in generic), [(r.check, r.detail) for r in generic if not r.passed]
    assert any(not r.passed and failing in r.check for r in results)


YOURS = """
from wml_framework import hookimpl

@hookimpl
def wml_register_losses(register):
    register("focal_wml", lambda cfg: None, help="your own focal loss")
    register("yours", lambda cfg: None, help="another loss of yours")
"""


def test_your_own_plugin_named_like_an_example_one(example, monkeypatch):
    """Your own ``focal_wml`` installed beside the example's: neither is used, in one line naming both
    packages and which plugin to block; every other name of both stays usable; blocking the
    example's plugin gives the name to yours; blocking the loss's name instead says which to block.

    Would catch: either one silently winning (a run's results would depend on what else is
    installed), the line printed once per plugin, the example's updater or your other loss lost,
    or a block list naming a loss that silently blocks nothing."""
    site = example / "site"
    (site / "wml_example_plugins_yours.py").write_text(YOURS)
    info = site / "yours-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: yours\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[wml]\nyour_focal = wml_example_plugins_yours\n")
    monkeypatch.delenv("WML_BLOCK_PLUGINS", raising=False)

    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    names = {kind: {r["name"] for r in rows} for kind, rows in data["plugins"].items()}
    assert "focal_wml" not in names["loss"] and {"yours", "wml"} <= names["loss"] and "softmax_ema" in names["updater"]
    assert sorted((f["plugin"], f["reason"]) for f in data["failed"]) == [
        ("example_focal", "name of two plugins"), ("your_focal", "name of two plugins")]
    monkeypatch.setattr(plugins, "_HOST", None)
    asked = CliRunner().invoke(main, ["config", "--loss", "focal_wml"])
    assert asked.exit_code == 2 and asked.output.count("is registered by plugin") == 1, asked.output
    assert "(wml-example-plugins 0.1.0)" in asked.output and "(yours 1.0)" in asked.output
    assert "WML_BLOCK_PLUGINS=example_focal or WML_BLOCK_PLUGINS=your_focal" in asked.output

    monkeypatch.setenv("WML_BLOCK_PLUGINS", "example_focal")
    assert PluginHost().get("loss", "focal_wml").distribution == "yours 1.0"
    monkeypatch.setenv("WML_BLOCK_PLUGINS", "focal_wml")
    monkeypatch.setattr(plugins, "_HOST", None)
    mistaken = CliRunner().invoke(main, ["config"])
    assert mistaken.exit_code == 0, mistaken.output
    assert "block the entry-point name 'example_focal' or 'your_focal' instead" in mistaken.stderr


def test_the_docs_quote_the_example_files_verbatim():
    """Every ```python block of docs/plugins.md that names an example file is a slice of that file."""
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    quoted = re.findall(r"```python\n# (docs/examples/[^\n]+\.py)\n(.*?)```", doc, re.S)
    assert len(quoted) >= 6
    for path, body in quoted:
        assert body.strip() in (ROOT / path).read_text(encoding="utf-8"), path
    assert "[project.entry-points.wml]" in doc and 'example_focal = "wml_example_plugins.focal_loss"' in doc


@pytest.mark.slow
def test_the_builtin_bayes_initializer_sizes_the_example_family(example):
    from transformers import AutoModelForCausalLM

    from wml_framework.api import peer_targets
    from wml_framework.config import from_dict

    host = PluginHost()
    family = host.create("family", "mistral")
    teacher = family.make_config(vocab_size=300, n_layer=4, n_head=4, head_dim=16, ffn=192, max_positions=64)
    model = AutoModelForCausalLM.from_config(teacher)
    assert family.count_parameters(teacher) == sum(p.numel() for p in model.parameters())
    cfg = from_dict({"bayesian_init_points": 10, "bayesian_n_iter": 60}, host=host)
    result = host.create("initializer", "bayes", cfg).build(model, family, peer_targets(family.count_parameters(teacher), 3))
    for peer, row in zip(result.peers, result.rows):
        assert peer.config.model_type == "mistral" and row["rel_error"] < 0.01
        assert row["parameters"] == sum(p.numel() for p in peer.parameters())


# ------------------------------------------------------------------ a real pip install, a real command line

@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install`` of a copy of the example into a private target folder (the venv is not touched)."""
    work = tmp_path_factory.mktemp("example")
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(target.glob("wml_example_plugins-0.1.0.dist-info"))
    return target


def _env(target: Path, **extra) -> dict:
    path = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_installed_package_from_the_command_line(installed, tmp_path, corpus):
    cli = [sys.executable, "-m", "wml_framework.cli"]
    listed = subprocess.run([*cli, "plugins", "--json"], capture_output=True, text=True, env=_env(installed), timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "softmax_ema" in {r["name"] for r in json.loads(listed.stdout)["plugins"]["updater"]}
    verified = subprocess.run([*cli, "verify", "--json", "--only", "focal_wml", "--only", "softmax_ema"],
                              capture_output=True, text=True, env=_env(installed), timeout=300)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert json.loads(verified.stdout)["passed"]
    out = tmp_path / "run"
    run = subprocess.run([*cli, *_run_args(corpus, out, **{"focal_wml.gamma": 0.5, "softmax_ema.tau": 2.0}),
                          "--loss", "focal_wml", "--updater", "softmax_ema"],
                         capture_output=True, text=True, env=_env(installed, WML_CACHE_DIR=str(tmp_path / "c")), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gamma = 0.5" in (out / "config.toml").read_text()
    bad = subprocess.run([*cli, *_run_args(corpus, tmp_path / "bad", **{"focal_wml.gama": 1})],
                         capture_output=True, text=True, env=_env(installed), timeout=300)
    assert bad.returncode == 2 and "unknown option focal_wml.gama; did you mean 'gamma'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
