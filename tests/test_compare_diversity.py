"""``wml compare`` reports, per member and per method, the peers' diversity (mean pairwise JS) and
the ensemble's gain over its best peer, measured by each run at its end (summary.json)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from run_helpers import TINY, toy_corpus

from wml_framework.cli import main


@pytest.mark.slow
def test_compare_reports_diversity_and_ensemble_gain_per_member_and_in_the_table(tmp_path):
    """Catches the two fields not reaching comparison.json from the members' summary.json (or read
    from the wrong key), a gain of the wrong sign or from other losses than the run's final
    evaluation, a method's mean that is not the mean over its seeds, and a table without them."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "cmp"
    sets = [a for k, v in {**TINY, "threads": "1", "num_peers": 3}.items()
            for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    result = CliRunner().invoke(main, ["compare", "--corpus", str(corpus), *sets, "--out", str(out),
                                       "--methods", "wml,ce", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "peers' JS" in result.output and "ensemble gain" in result.output
    data = json.loads((out / "comparison.json").read_text())
    for name, member in data["members"].items():
        summary = json.loads((out / "members" / name / "summary.json").read_text())
        best = min(p["val_loss"] for p in summary["peers"])
        assert 0 < member["diversity_js"] < math.log(2)
        assert member["ensemble_gain"] == pytest.approx(best - summary["ensemble_val_loss"], abs=1e-12)
        assert len(summary["diversity"]["js_pairs"]) == 3
    by = {m["label"]: m for m in data["methods"]}
    for label in ("wml", "ce"):
        per_seed = [data["members"][f"{label}-seed{s}"]["diversity_js"] for s in data["seeds"]]
        assert by[label]["diversity_js"]["per_seed"] == per_seed
        assert by[label]["diversity_js"]["mean"] == pytest.approx(sum(per_seed) / 2)
    gain = by["ce"]["ensemble_gain"]
    assert gain["vs_baseline"]["mean"] == pytest.approx(gain["mean"] - by["wml"]["ensemble_gain"]["mean"])
    md = (out / "comparison.md").read_text()
    js = by["wml"]["diversity_js"]
    assert "peers' diversity: mean pairwise JS (nats)" in md and "ensemble gain over its best peer" in md
    assert f"| wml | {js['mean']:.4f} ± {js['std']:.4f} | (baseline) |" in md
