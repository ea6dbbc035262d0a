"""The third-party example in docs/examples/: installed for real (pip, into a private folder),
listed by ``wml plugins``, verified by ``wml verify``, and driving a short training step."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from helpers_models import build, lm_batch, tiny_llama_config, toy_corpus
from wml_framework import config
from wml_framework.api import OuterContext
from wml_framework.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "wml-example-updater"


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
    assert list(target.glob("wml_example_updater-0.1.0.dist-info"))
    return target


def _env(target: Path) -> dict:
    path = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_wml_plugins_lists_it(installed):
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "plugins", "--json"],
                          capture_output=True, text=True, env=_env(installed), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["plugins"]["updater"]}
    assert rows["val-softmax"]["plugin"] == "example_updater"
    assert rows["val-softmax"]["package"] == "wml-example-updater 0.1.0"
    assert {"mirror", "uniform", "fixed"} <= set(rows)


def test_wml_verify_passes_for_it(installed):
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "verify", "--json", "--only", "val-softmax"],
                          capture_output=True, text=True, env=_env(installed), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["passed"] and {c["name"] for c in data["checks"]} == {"val-softmax"}
    assert {c["check"] for c in data["checks"]} >= {"step ω on simplex", "deterministic", "peers untouched"}


def test_short_training_run_with_it(installed, monkeypatch):
    """Entry-point discovery in this process, then inner steps and outer steps driven by the plugin."""
    monkeypatch.syspath_prepend(str(installed))
    importlib.invalidate_caches()
    try:
        host = PluginHost()
        entry = host.get("updater", "val-softmax")
        assert entry.plugin == "example_updater" and entry.distribution == "wml-example-updater 0.1.0"
        torch.manual_seed(0)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        V = 64
        peers = [build(tiny_llama_config(vocab_size=V, hidden=16, n_head=2, ffn=32, n_layer=1), seed=s).train()
                 for s in range(2)]
        tokens = toy_corpus(V, n_seq=24, seq_len=17, seed=1)
        train, val = lm_batch(tokens[:16, :-1]), lm_batch(tokens[16:])
        cfg = config.from_dict({"num_peers": 2, "updater": "val-softmax"}, check_plugins=False)
        loss = host.create("loss", "wml", cfg)
        updater = host.create("updater", "val-softmax", cfg, 2)
        omega = updater.initial_omega()
        opts = [torch.optim.AdamW(p.parameters(), lr=3e-3) for p in peers]
        history = []
        for step in range(6):
            res = loss([p(input_ids=train.inputs).logits for p in peers], train.labels, omega)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            res.total.backward()
            for opt in opts:
                opt.step()
            history.append(float(res.total.detach()))
            if step % 2 == 1:
                ctx = OuterContext(peers=peers, loss=loss, omega=omega, train=train, val=val,
                                   inner_lr=3e-3, outer_step=step // 2)
                out = updater.step(ctx)
                assert out.omega.dtype == torch.float64 and abs(float(out.omega.sum()) - 1) < 1e-12
                omega = out.omega
        assert history[-1] < history[0]
        assert not torch.allclose(omega, torch.full((2,), 0.5, dtype=torch.float64))   # the plugin moved ω
        assert all(p.training for p in peers)                                           # and restored modes
        assert updater.state_dict() == {"updates": 3}
        torch.set_num_threads(old_threads)
    finally:
        sys.modules.pop("wml_example_updater", None)


def test_docs_show_the_registration_that_the_example_uses():
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    entry_points = meta["project"]["entry-points"]["wml"]
    assert entry_points == {"example_updater": "wml_example_updater"}
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert '[project.entry-points.wml]\nexample_updater = "wml_example_updater"' in doc
    assert "docs/examples/wml-example-updater/" in doc and "wml verify" in doc
    code = (EXAMPLE / "src" / "wml_example_updater" / "__init__.py").read_text()
    assert 'register("val-softmax", make_val_softmax)' in code and 'register("val-softmax", make_val_softmax)' in doc
