"""The run report: PNG plots of a run's curves and results, and a ``report.md`` embedding them.

Reads what the trainer and ``wml eval`` leave in a run folder (``summary.json``,
``metrics.jsonl``, ``eval.json``) and copes with any of them missing or partial: a plot
whose data is absent is left out and the report says why.

May import: :mod:`wml_framework.evaluation` (reading runs) and :mod:`wml_framework.runtime`; nothing
of training: a report is made from files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.atomic import atomic_write_text
from ..runtime.run_layout import RunLayout
from .plots import PLOTS, make_figures, peer_color, save_figure
from .run_data import (
    ACCURACY_FIELDS,
    Row,
    RunData,
    evaluator_with,
    load_run_data,
    result_rows,
)

__all__ = ["Report", "write_report", "load_run_data", "peer_color"]


@dataclass
class Report:
    path: Path
    plots: dict[str, Path]
    notes: list[str]


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _params(n: int | None) -> str:
    return "—" if not n else f"{n:,}"


def results_table(data: RunData, rows: list[Row]) -> list[str]:
    causal = data.measure == "next-token loss"      # exp of a masked-token loss is no perplexity
    loss_title = "held-out loss" if causal else f"held-out {data.measure}"
    lines = [f"| model | parameters | shape | ω | {loss_title} | perplexity | minimal pairs (macro) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        name = r.name
        if r.name == data.champion:
            name = f"**{r.name}** ★ champion"
        elif r.role != "peer":
            name = f"*{r.name}*"
        acc = "—" if r.accuracy is None else f"{100 * r.accuracy:.1f}%"
        lines.append(f"| {name} | {_params(r.parameters)} | {r.shape or '—'} | {_fmt(r.omega, '.3f')} | "
                     f"{_fmt(r.loss, '.4f')} | {_fmt(r.ppl if causal else None, '.2f')} | {acc} |")
    return lines


def paradigm_table(data: RunData) -> list[str]:
    key_name = evaluator_with(data.evaluation, ACCURACY_FIELDS)
    if key_name is None:
        return []
    found = data.evaluation.get("models", {})
    order = [n for n in [*data.names, "ensemble", "teacher"] if n in found] + [n for n in found if n not in data.names + ["ensemble", "teacher"]]
    models = {n: found[n] for n in order if found[n].get(key_name)}
    if not models:
        return []
    first = next(iter(models.values()))[key_name]
    key = "uids" if first.get("paradigm_key") == "UID" else "files"
    names = list(models)
    lines = [f"| paradigm ({first.get('paradigm_key')}) | pairs | " + " | ".join(names) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for p, stats in first.get(key, {}).items():
        cells = [f"{100 * models[n][key_name].get(key, {}).get(p, {}).get('accuracy', float('nan')):.1f}" for n in names]
        lines.append(f"| {p} | {stats['pairs']} | " + " | ".join(cells) + " |")
    return lines


def fitted_line(data: RunData) -> list[str]:
    """The fitted ω beside the trained one, with the ω-half losses the fit chose by."""
    s = data.summary
    if s.get("fitted_omega") is None:
        return []
    peers = (s.get("omega_fit") or {}).get("peer_losses") or []
    weights = ", ".join(f"{w:.3f}" for w in s["fitted_omega"])
    return ["", f"*ensemble, fitted ω*: ω = [{weights}], fitted at the end of the run on the ω half of the held-out "
            f"split (loss there {_fmt(s.get('fitted_ensemble_omega_half_loss'), '.4f')}, vs "
            f"{_fmt(s.get('ensemble_omega_half_loss'), '.4f')} with the trained ω and "
            f"{_fmt(min(peers) if peers else None, '.4f')} for the best peer alone); its held-out loss above is the "
            "trainer's, on the evaluated half. `wml eval` scores this ensemble unless told `--omega trained`."]


def write_report(run_dir: str | Path) -> Report:
    """Write ``plots/*.png`` and ``report.md`` into the run folder; returns what was written."""
    data = load_run_data(run_dir)
    rows, loss_source, acc_source = result_rows(data)
    figures = make_figures(data, rows)
    plots_dir = RunLayout(data.run_dir).plots
    written: dict[str, Path] = {}
    missing: list[str] = []
    for stem, caption, needs in PLOTS:
        fig = figures.get(stem)
        if fig is None:
            missing.append(f"Plot '{caption}' left out: it needs {needs}.")
            continue
        save_figure(fig, plots_dir / f"{stem}.png")
        written[stem] = plots_dir / f"{stem}.png"
    notes = data.notes + missing
    steps = data.summary.get("steps")
    head = [f"# WML run report: {data.run_dir.name}", "",
            f"Run folder `{data.run_dir}` · {len(data.names)} peers" + (f" · {steps} steps" if steps is not None else "")
            + (f" · champion **{data.champion}**" if data.champion else "") + f" · ω from {data.omega_source}.", "",
            "## Results", "", *results_table(data, rows), "",
            f"Held-out loss: from {loss_source}. Perplexity = exp(loss).  ",
            f"Minimal-pair accuracy: {acc_source}. The ensemble scores with the ω-weighted sum of its peers' logits; "
            "its parameter count is the sum of its peers'.", *fitted_line(data), ""]
    ptable = paradigm_table(data)
    if ptable:
        head += ["### Minimal-pair accuracy per paradigm (%)", "", *ptable, ""]
    body = ["## Plots", ""]
    for stem, caption, _needs in PLOTS:
        if stem in written:
            body += [f"### {caption}", "", f"![{caption}](plots/{stem}.png)", ""]
    if notes:
        body += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = RunLayout(data.run_dir).report
    atomic_write_text(path, "\n".join(head + body))
    return Report(path, written, notes)
