"""The benchmark scripts run (on tiny sizes) and write only their own section of the doc."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real installs and subprocess runs: the full suite only

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, doc: Path) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--write-doc", str(doc)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_default_run_benchmark_quick(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    out = _run("bench_default_run.py", "--quick", "--variants", "bayes + mirror", doc=doc)
    assert "bayes + mirror" in out and "ensemble" in out
    text = doc.read_text()
    assert "keep me" in text and "<!-- default_run:start -->" in text and "| bayes + mirror |" in text


def test_eval_benchmark_tiny(tmp_path):
    doc = tmp_path / "performance.md"
    _run("bench_eval.py", "--paradigms", "2", "--pairs", "5", "--hidden", "32", "--layers", "1", "--heads", "2",
         "--intermediate", "64", "--vocab", "300", "--threads", "1", doc=doc)
    assert "<!-- eval:start -->" in doc.read_text()


def test_train_benchmark_tiny(tmp_path):
    """Would catch: a variant that fails to run, or ratios and MFU that are not computed from it."""
    doc = tmp_path / "performance.md"
    tiny = ["vocab_size=300", "teacher_n_layer=2", "teacher_n_embd=64", "teacher_n_head=2", "outer_every=2",
            "bayesian_n_iter=3", "bayesian_init_points=2", "block_size=32", "batch_size=2"]
    out = _run("bench_train.py", "--threads", "1", "--rounds", "2", *[a for s in tiny for a in ("--set", s)], doc=doc)
    line = next(x for x in out.splitlines() if x.startswith("1 thread(s):"))
    assert "plain 1.00x" in line and "wml+mirror" in line and "MFU" in line
    text = doc.read_text()
    assert "<!-- bench-train:start -->" in text and "| wml+mirror |" in text


def test_train_benchmark_scaling_tiny(tmp_path):
    """Would catch: a torchrun worker that fails, or a scaling table that is not written."""
    doc = tmp_path / "performance.md"
    tiny = ["vocab_size=300", "teacher_n_layer=2", "teacher_n_embd=64", "teacher_n_head=2", "outer_every=2",
            "bayesian_n_iter=3", "bayesian_init_points=2", "block_size=32", "batch_size=4"]
    out = _run("bench_train.py", "--nproc", "2", "--rounds", "1", *[a for s in tiny for a in ("--set", s)], doc=doc)
    assert "2 processes:" in out and "efficiency" in out
    assert "<!-- bench-scaling:start -->" in doc.read_text()
