"""``wml report``: plots and report.md from a synthetic run folder, complete or with parts missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from eval_synthetic import synthetic_sentences, write_synthetic_run
from matplotlib.colors import to_hex

from wml_framework.cli import main
from wml_framework.evaluation.scoring import evaluate, write_eval_json
from wml_framework.report import write_report
from wml_framework.report.plots import (
    ENSEMBLE_COLOR,
    PLOTS,
    TEACHER_COLOR,
    make_figures,
    peer_color,
)
from wml_framework.report.run_data import load_run_data, result_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A run folder with metrics, summary and an eval.json made by `wml eval`'s own code."""
    root = tmp_path_factory.mktemp("report")
    info = write_synthetic_run(root / "run", num_peers=4, steps=80)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(synthetic_sentences(6, seed=k)) for k in range(1200)), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("WML_CACHE_DIR", str(root / "cache"))
    try:
        result = evaluate(root / "run", corpus=str(corpus), limit=3, block_size=16, settings={"perplexity.max_blocks": 2},
                          log=lambda _m: None)
    finally:
        mp.undo()
    write_eval_json(root / "run" / "eval.json", result)
    return {"run": root / "run", **info}


def copy_run(src, dst, drop=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("plots", "report.md", *drop))
    return dst


def test_report_with_everything(evaluated_run):
    report = write_report(evaluated_run["run"])
    assert set(report.plots) == {stem for stem, _c, _n in PLOTS}
    for path in report.plots.values():
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    md = report.path.read_text()
    for stem in report.plots:
        assert f"](plots/{stem}.png)" in md
    champion = evaluated_run["champion"]
    assert f"| **{champion}** ★ champion |" in md
    for name, params in zip(evaluated_run["names"], evaluated_run["parameters"]):
        assert f"{params:,}" in md and name in md
    assert "*ensemble*" in md and "*teacher*" in md and "from `wml eval`" in md
    assert "### Minimal-pair accuracy per paradigm" in md and "anaphor_number_agreement" in md
    assert "eval.json is absent" not in md


def test_results_table_numbers_come_from_eval_json(evaluated_run):
    data = load_run_data(evaluated_run["run"])
    rows, _loss_source, _acc_source = result_rows(data)
    evaluation = json.loads((evaluated_run["run"] / "eval.json").read_text())
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == [*evaluated_run["names"], "ensemble", "teacher"]
    for name, m in evaluation["models"].items():
        assert by_name[name].loss == m["perplexity"]["loss"]
        assert by_name[name].accuracy == m["minimal_pairs"]["macro_accuracy"]
    assert by_name["ensemble"].parameters == sum(evaluated_run["parameters"])
    assert [by_name[n].omega for n in evaluated_run["names"]] == pytest.approx(evaluated_run["omega"])


def test_one_peer_one_colour_in_every_plot_and_axes_labelled(evaluated_run):
    data = load_run_data(evaluated_run["run"])
    rows, *_ = result_rows(data)
    figures = {k: f for k, f in make_figures(data, rows).items() if f is not None}
    assert len(figures) == len(PLOTS)
    seen = {}
    for stem, fig in figures.items():
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), stem
        assert ax.get_legend() is not None and ax.get_legend().get_texts(), stem
        artists = [(a.get_label(), to_hex(a.get_color())) for a in ax.get_lines()]
        artists += [(c.get_label(), to_hex(c.get_facecolor()[0])) for c in ax.collections]
        for label, colour in artists:
            name = label.split(" ")[0]
            if name in data.names:
                assert colour == peer_color(data.names.index(name)), (stem, label)
                seen.setdefault(name, set()).add(stem)
            elif name == "teacher":
                assert colour == TEACHER_COLOR.lower(), stem
            elif name == "ensemble":
                assert colour == ENSEMBLE_COLOR, stem
    assert set(seen) == set(data.names) and all(len(stems) == len(figures) for stems in seen.values())
    assert len({peer_color(i) for i in range(12)}) == 12 and TEACHER_COLOR not in {peer_color(i) for i in range(18)}


@pytest.mark.slow
def test_report_without_eval_json_leaves_accuracy_out(evaluated_run, tmp_path):
    run = copy_run(evaluated_run["run"], tmp_path / "run", drop=("eval.json",))
    report = write_report(run)
    assert "params_vs_accuracy" not in report.plots and not (run / "plots" / "params_vs_accuracy.png").exists()
    md = report.path.read_text()
    assert "eval.json is absent, so minimal-pair accuracy is left out" in md
    assert "summary.json" in md  # held-out loss then comes from the trainer's summary
    champion_row = next(line for line in md.splitlines() if "★ champion" in line)
    assert champion_row.rstrip().endswith("| — |")


@pytest.mark.slow
def test_report_with_missing_and_partial_metrics(evaluated_run, tmp_path):
    run = copy_run(evaluated_run["run"], tmp_path / "run", drop=("eval.json", "summary.json"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [{k: v for k, v in r.items() if k != "kl"} for r in rows if r["kind"] == "train"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"kind": "train", "st\n')
    report = write_report(run)
    assert set(report.plots) == {"train_ce", "omega"}
    md = report.path.read_text()
    assert "summary.json is missing" in md and "1 unreadable line(s) skipped" in md
    assert "Plot 'Distillation (KL) term per peer' left out" in md
    assert "ω from metrics.jsonl (last 'train' record" in md

    bare = copy_run(evaluated_run["run"], tmp_path / "bare", drop=("eval.json", "metrics.jsonl"))
    report = write_report(bare)
    assert set(report.plots) == {"params_vs_loss"}  # summary.json alone still gives size vs loss
    assert "metrics.jsonl is missing" in report.path.read_text()


def test_report_cli_in_process(evaluated_run, tmp_path):
    run = copy_run(evaluated_run["run"], tmp_path / "run")
    result = CliRunner().invoke(main, ["report", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"wrote {run / 'report.md'}" in result.stdout and result.stdout.count("plot  ") == len(PLOTS)
    result = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_report_plots_the_loss_of_each_omega_batch(evaluated_run):
    """Would catch: the report reading a field the trainer never writes (it read 'ensemble_loss',
    the trainer writes the ω-batch loss as 'val_loss' in each outer record)."""
    data = load_run_data(evaluated_run["run"])
    rows, *_ = result_rows(data)
    fig = make_figures(data, rows)["held_out_loss"]
    labels = [h.get_label() for ax in fig.axes for h in ax.collections]
    assert "ensemble, ω-update batch" in labels


@pytest.mark.slow
def test_report_cli_as_subprocess(evaluated_run, tmp_path):
    run = copy_run(evaluated_run["run"], tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "wml_framework.cli", "report", str(run)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (run / "report.md").is_file()
