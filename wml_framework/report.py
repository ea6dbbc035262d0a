"""The run report: PNG plots of a run's curves and results, and a ``report.md`` embedding them.

Reads what the trainer and ``wml eval`` leave in a run folder (``summary.json``,
``metrics.jsonl``, ``eval.json``) and copes with any of them missing or partial: a plot
whose data is absent is left out and the report says why. One peer keeps one colour in
every plot (a fixed palette indexed by peer number); the ensemble is black and the teacher
grey with a star marker.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_bytes, atomic_write_text
from .scoring import peer_dirs, read_json, read_jsonl, run_omega

#: tab10 without its grey (kept for the teacher), then tab20's lighter tones
_PEER_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                 "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
ENSEMBLE_COLOR = "#000000"
TEACHER_COLOR = "#7f7f7f"


def peer_color(index: int) -> str:
    """The colour of peer ``index`` in every plot."""
    return _PEER_PALETTE[index % len(_PEER_PALETTE)]


def _peer_index(name: str, names: Sequence[str]) -> int:
    return list(names).index(name) if name in names else len(names)


# --------------------------------------------------------------------------------------
# what the run folder holds
# --------------------------------------------------------------------------------------


@dataclass
class RunData:
    run_dir: Path
    names: list[str]
    summary: dict
    evaluation: dict
    records: dict[str, list[dict]]
    omega: np.ndarray | None
    omega_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def champion(self) -> str | None:
        return self.summary.get("champion") or self.evaluation.get("champion")


def load_run_data(run_dir: str | Path) -> RunData:
    """Everything the report needs, with a note for each thing that is missing or broken."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    summary = read_json(run_dir / "summary.json")
    if not summary:
        notes.append("summary.json is missing or unreadable: parameters, shapes and training losses come from elsewhere or are left out.")
    evaluation = read_json(run_dir / "eval.json")
    if not evaluation:
        notes.append("eval.json is absent, so minimal-pair accuracy is left out (run `wml eval RUN_DIR` to add it).")
    bad_lines: list[int] = []
    rows = read_jsonl(run_dir / "metrics.jsonl", on_error=lambda n, _msg: bad_lines.append(n))
    if not (run_dir / "metrics.jsonl").is_file():
        notes.append("metrics.jsonl is missing: no training curves.")
    if bad_lines:
        notes.append(f"metrics.jsonl: {len(bad_lines)} unreadable line(s) skipped (first: line {bad_lines[0]}).")
    records = {kind: [r for r in rows if r.get("kind") == kind and isinstance(r.get("step"), (int, float))]
               for kind in ("train", "outer", "eval")}
    names = [p["name"] for p in summary.get("peers", []) if isinstance(p, dict) and "name" in p]
    if not names and evaluation:
        names = [n for n, m in evaluation.get("models", {}).items() if m.get("role") == "peer"]
    if not names and (run_dir / "peers").is_dir():
        names = [p.name for p in peer_dirs(run_dir)]
    if not names:
        width = max((len(r.get("ce", [])) for r in records["train"]), default=0)
        names = [f"peer_{i}" for i in range(width)]
    omega, source = (run_omega(run_dir, len(names)) if names else (None, "none"))
    return RunData(run_dir, names, summary, evaluation, records, omega, source, notes)


def _series(records: list[dict], key: str, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and a (steps, width) array of a per-peer field; rows of the wrong width are skipped."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, list) and len(v) == width and all(isinstance(x, (int, float)) and x is not None for x in v):
            steps.append(r["step"])
            values.append(v)
    if not steps:
        return None
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _scalar_series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not pts:
        return None
    a = np.asarray(pts, dtype=float)
    return a[:, 0], a[:, 1]


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average (bias-corrected), so noisy per-step curves stay legible."""
    alpha = 2.0 / (span + 1)
    out, acc, norm = np.empty_like(y), 0.0, 0.0
    for i, v in enumerate(y):
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out[i] = acc / norm
    return out


# --------------------------------------------------------------------------------------
# plots (each returns a matplotlib Figure, or None when its data is absent)
# --------------------------------------------------------------------------------------


def _figure(title: str, xlabel: str, ylabel: str):
    # A bare Figure renders through Agg without pyplot: no GUI backend, no global state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), dpi=130, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _legend(ax, n_items: int) -> None:
    if n_items > 6:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.legend(fontsize=9, loc="best", framealpha=0.85)


def plot_train_metric(data: RunData, key: str, title: str, ylabel: str):
    """Per-peer training curve of ``ce`` or ``kl`` (raw faintly, smoothed boldly when long)."""
    s = _series(data.records["train"], key, len(data.names))
    if s is None:
        return None
    steps, values = s
    fig, ax = _figure(title, "optimizer step", ylabel)
    long = len(steps) > 60
    for i, name in enumerate(data.names):
        color = peer_color(i)
        if long:
            ax.plot(steps, values[:, i], color=color, alpha=0.2, linewidth=0.8)
            ax.plot(steps, _smooth(values[:, i], max(5, len(steps) // 30)), color=color, linewidth=1.8, label=name)
        else:
            ax.plot(steps, values[:, i], color=color, linewidth=1.6, marker="." if len(steps) < 30 else None, label=name)
    if long:
        ax.text(0.99, 0.98, "faint: per step · bold: moving average", transform=ax.transAxes, ha="right", va="top",
                fontsize=8, color="#555555")
    _legend(ax, len(data.names))
    return fig


def plot_held_out_loss(data: RunData):
    """Held-out loss over training: each peer, the ω-ensemble and the teacher; plus the
    ensemble loss on each outer (ω-update) batch."""
    ev = _series(data.records["eval"], "val_loss", len(data.names))
    ens = _scalar_series(data.records["eval"], "ensemble_val_loss")
    outer = _scalar_series(data.records["outer"], "ensemble_loss")
    teacher = _scalar_series(data.records["eval"], "teacher_val_loss")
    if ev is None and ens is None and outer is None:
        return None
    title = "Held-out loss: peers, ensemble" + (" and teacher" if teacher is not None else "")
    fig, ax = _figure(title, "optimizer step", "held-out cross-entropy (nats/token)")
    items = 0
    if ev is not None:
        for i, name in enumerate(data.names):
            ax.plot(ev[0], ev[1][:, i], color=peer_color(i), linewidth=1.3, marker="o", markersize=3, label=name)
            items += 1
    if ens is not None:
        ax.plot(ens[0], ens[1], color=ENSEMBLE_COLOR, linewidth=2.4, marker="s", markersize=4, label="ensemble (ω-weighted logits)")
        items += 1
    if outer is not None:
        ax.scatter(outer[0], outer[1], color=ENSEMBLE_COLOR, marker="x", s=18, alpha=0.6, label="ensemble, ω-update batch")
        items += 1
    if teacher is not None:
        ax.plot(teacher[0], teacher[1], color=TEACHER_COLOR, linestyle="--", linewidth=1.6, marker="*", markersize=7, label="teacher")
        items += 1
    _legend(ax, items)
    return fig


def plot_omega(data: RunData):
    """Peer weights ω over time (outer updates; the train records' ω when there are none)."""
    s = _series(data.records["outer"], "omega", len(data.names)) or _series(data.records["train"], "omega", len(data.names))
    if s is None:
        return None
    steps, values = s
    fig, ax = _figure("Peer weights ω over training", "optimizer step", "ω (peer weight; sums to 1)")
    for i, name in enumerate(data.names):
        ax.plot(steps, values[:, i], color=peer_color(i), linewidth=1.8, marker="o" if len(steps) < 40 else None,
                markersize=3, label=name)
    ax.axhline(1.0 / len(data.names), color="#999999", linestyle=":", linewidth=1, label=f"uniform 1/{len(data.names)}")
    ax.set_ylim(0, max(1.0 / len(data.names) * 1.5, float(values.max()) * 1.1))
    _legend(ax, len(data.names) + 1)
    return fig


@dataclass
class Row:
    """One line of the results table."""

    name: str
    role: str
    parameters: int | None = None
    shape: str | None = None
    omega: float | None = None
    loss: float | None = None
    ppl: float | None = None
    accuracy: float | None = None
    pairs: int | None = None


def result_rows(data: RunData) -> tuple[list[Row], str, str]:
    """Peers, ensemble and teacher with their numbers, plus where loss and accuracy came from."""
    models = data.evaluation.get("models", {}) if data.evaluation else {}
    speers = {p.get("name"): p for p in data.summary.get("peers", []) if isinstance(p, dict)}
    loss_from_eval = any((m.get("perplexity") or {}).get("loss") is not None for m in models.values())
    rows = []
    for i, name in enumerate(data.names):
        sp, em = speers.get(name, {}), models.get(name, {})
        rows.append(_row(name, "peer", sp, em, None if data.omega is None else float(data.omega[i]), loss_from_eval))
    teacher_summary = data.summary.get("teacher") if isinstance(data.summary.get("teacher"), dict) else {}
    ens = _row("ensemble", "ensemble", {"val_loss": data.summary.get("ensemble_val_loss")}, models.get("ensemble", {}),
               None, loss_from_eval)
    if ens.parameters is None and all(r.parameters for r in rows) and rows:
        ens.parameters = sum(r.parameters for r in rows)
    rows.append(ens)
    if teacher_summary or "teacher" in models:
        rows.append(_row("teacher", "teacher", teacher_summary or {}, models.get("teacher", {}), None, loss_from_eval))
    if loss_from_eval:
        setting = data.evaluation.get("settings", {})
        loss_source = f"`wml eval` (held-out split of corpus `{setting.get('corpus')}`, block size {setting.get('block_size')})"
    elif any(r.loss is not None for r in rows):
        loss_source = "the trainer's last held-out evaluation (summary.json)"
    else:
        loss_source = "not available"
    mp = data.evaluation.get("minimal_pairs", {}) if data.evaluation else {}
    acc_source = (f"`wml eval` ({mp.get('pairs')} pairs from {len(mp.get('source', []))} file(s), macro average over paradigms)"
                  if any(r.accuracy is not None for r in rows) else "not available (no eval.json, or it has no minimal-pair results)")
    return rows, loss_source, acc_source


def _row(name: str, role: str, summary_part: dict, eval_part: dict, omega: float | None, loss_from_eval: bool) -> Row:
    row = Row(name, role, omega=omega)
    row.parameters = summary_part.get("parameters") or eval_part.get("parameters")
    row.shape = summary_part.get("shape")
    ppl = eval_part.get("perplexity") or {}
    if loss_from_eval:
        row.loss, row.ppl = ppl.get("loss"), ppl.get("ppl")
    elif isinstance(summary_part.get("val_loss"), (int, float)):
        row.loss = float(summary_part["val_loss"])
        row.ppl = math.exp(row.loss) if row.loss < 700 else float("inf")
    mp = eval_part.get("minimal_pairs") or {}
    row.accuracy, row.pairs = mp.get("macro_accuracy"), mp.get("pairs")
    return row


def _human(n: float) -> str:
    """12k, 1.5M: readable parameter counts on a log axis."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def _leading_digit(x: float) -> int:
    return int(f"{x:e}"[0]) if x > 0 else 0


def plot_parameters_vs(data: RunData, rows: list[Row], metric: str):
    """Parameters (log scale) against held-out loss (``metric='loss'``) or minimal-pair
    accuracy (``'accuracy'``): peers in their colours, the teacher as a grey star, the
    ensemble as a horizontal line (it is not one model of one size)."""
    get = (lambda r: r.loss) if metric == "loss" else (lambda r: None if r.accuracy is None else 100 * r.accuracy)
    points = [r for r in rows if r.role in ("peer", "teacher") and r.parameters and get(r) is not None]
    if not any(r.role == "peer" for r in points):
        return None
    ylabel = "held-out cross-entropy (nats/token)" if metric == "loss" else "minimal-pair accuracy, macro (%)"
    title = "Size vs held-out loss" if metric == "loss" else "Size vs minimal-pair accuracy"
    fig, ax = _figure(title, "parameters (log scale)", ylabel)
    ax.set_xscale("log")
    items = 0
    for r in points:
        if r.role == "peer":
            i = _peer_index(r.name, data.names)
            star = r.name == data.champion
            ax.scatter([r.parameters], [get(r)], s=110 if star else 60, color=peer_color(i), edgecolor="black" if star else "none",
                       linewidth=1.5, zorder=3, label=r.name + (" (champion)" if star else ""))
        else:
            ax.scatter([r.parameters], [get(r)], s=220, marker="*", color=TEACHER_COLOR, edgecolor="black", linewidth=0.8,
                       zorder=3, label="teacher")
        ax.annotate(r.name, (r.parameters, get(r)), textcoords="offset points", xytext=(7, 5), fontsize=8)
        items += 1
    ens = next((r for r in rows if r.role == "ensemble" and get(r) is not None), None)
    if ens is not None:
        ax.axhline(get(ens), color=ENSEMBLE_COLOR, linestyle="--", linewidth=1.4, label="ensemble (all peers)")
        items += 1
    if metric == "accuracy":
        ax.axhline(50, color="#999999", linestyle=":", linewidth=1, label="chance (50%)")
        items += 1
    xs = [r.parameters for r in points]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _human(x)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _pos: _human(x) if _leading_digit(x) in (2, 5) else ""))
    _legend(ax, items)
    return fig


# --------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------


@dataclass
class Report:
    path: Path
    plots: dict[str, Path]
    notes: list[str]


PLOTS = [  # file stem, caption, what it needs (said when it is left out)
    ("train_ce", "Training cross-entropy per peer", "'train' records with a per-peer 'ce' in metrics.jsonl"),
    ("train_kl", "Distillation (KL) term per peer", "'train' records with a per-peer 'kl' in metrics.jsonl"),
    ("held_out_loss", "Held-out loss during training", "'eval' or 'outer' records in metrics.jsonl"),
    ("omega", "Peer weights ω over training", "'outer' or 'train' records with a per-peer 'omega' in metrics.jsonl"),
    ("params_vs_loss", "Parameters vs held-out loss", "parameter counts and held-out losses (summary.json or eval.json)"),
    ("params_vs_accuracy", "Parameters vs minimal-pair accuracy", "minimal-pair results in eval.json (`wml eval RUN_DIR`)"),
]


def make_figures(data: RunData, rows: list[Row]) -> dict[str, Any]:
    """Every plot the data allows, by file stem (absent ones are None)."""
    return {
        "train_ce": plot_train_metric(data, "ce", "Training cross-entropy per peer", "cross-entropy (nats/token)"),
        "train_kl": plot_train_metric(data, "kl", "Distillation term per peer (ω-weighted KL to the other peers)",
                                      "KL (nats/token)"),
        "held_out_loss": plot_held_out_loss(data),
        "omega": plot_omega(data),
        "params_vs_loss": plot_parameters_vs(data, rows, "loss"),
        "params_vs_accuracy": plot_parameters_vs(data, rows, "accuracy"),
    }


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _params(n: int | None) -> str:
    return "—" if not n else f"{n:,}"


def results_table(data: RunData, rows: list[Row]) -> list[str]:
    lines = ["| model | parameters | shape | ω | held-out loss | perplexity | minimal pairs (macro) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        name = r.name
        if r.name == data.champion:
            name = f"**{r.name}** ★ champion"
        elif r.role != "peer":
            name = f"*{r.name}*"
        acc = "—" if r.accuracy is None else f"{100 * r.accuracy:.1f}%"
        lines.append(f"| {name} | {_params(r.parameters)} | {r.shape or '—'} | {_fmt(r.omega, '.3f')} | "
                     f"{_fmt(r.loss, '.4f')} | {_fmt(r.ppl, '.2f')} | {acc} |")
    return lines


def paradigm_table(data: RunData) -> list[str]:
    found = data.evaluation.get("models", {})
    order = [n for n in [*data.names, "ensemble", "teacher"] if n in found] + [n for n in found if n not in data.names + ["ensemble", "teacher"]]
    models = {n: found[n] for n in order if found[n].get("minimal_pairs")}
    if not models:
        return []
    first = next(iter(models.values()))["minimal_pairs"]
    key = "uids" if first.get("paradigm_key") == "UID" else "files"
    names = list(models)
    lines = [f"| paradigm ({first.get('paradigm_key')}) | pairs | " + " | ".join(names) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for p, stats in first.get(key, {}).items():
        cells = [f"{100 * models[n]['minimal_pairs'][key].get(p, {}).get('accuracy', float('nan')):.1f}" for n in names]
        lines.append(f"| {p} | {stats['pairs']} | " + " | ".join(cells) + " |")
    return lines


def write_report(run_dir: str | Path) -> Report:
    """Write ``plots/*.png`` and ``report.md`` into the run folder; returns what was written."""
    data = load_run_data(run_dir)
    rows, loss_source, acc_source = result_rows(data)
    figures = make_figures(data, rows)
    plots_dir = data.run_dir / "plots"
    written: dict[str, Path] = {}
    missing: list[str] = []
    for stem, caption, needs in PLOTS:
        fig = figures.get(stem)
        if fig is None:
            missing.append(f"Plot '{caption}' left out: it needs {needs}.")
            continue
        _save(fig, plots_dir / f"{stem}.png")
        written[stem] = plots_dir / f"{stem}.png"
    notes = data.notes + missing
    steps = data.summary.get("steps")
    head = [f"# WML run report: {data.run_dir.name}", "",
            f"Run folder `{data.run_dir}` · {len(data.names)} peers" + (f" · {steps} steps" if steps is not None else "")
            + (f" · champion **{data.champion}**" if data.champion else "") + f" · ω from {data.omega_source}.", "",
            "## Results", "", *results_table(data, rows), "",
            f"Held-out loss: from {loss_source}. Perplexity = exp(loss).  ",
            f"Minimal-pair accuracy: {acc_source}. The ensemble scores with the ω-weighted sum of its peers' logits; "
            "its parameter count is the sum of its peers'.", ""]
    ptable = paradigm_table(data)
    if ptable:
        head += ["### Minimal-pair accuracy per paradigm (%)", "", *ptable, ""]
    body = ["## Plots", ""]
    for stem, caption, _needs in PLOTS:
        if stem in written:
            body += [f"### {caption}", "", f"![{caption}](plots/{stem}.png)", ""]
    if notes:
        body += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = data.run_dir / "report.md"
    atomic_write_text(path, "\n".join(head + body))
    return Report(path, written, notes)
