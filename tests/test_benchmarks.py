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
