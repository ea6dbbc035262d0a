"""The report's figures: one peer keeps one colour in every plot (a fixed palette indexed by peer
number); the ensemble is black and the teacher grey with a star marker."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..runtime.atomic import atomic_write_bytes
from .run_data import Row, RunData, _scalar_series, _series

__all__ = ["ENSEMBLE_COLOR", "TEACHER_COLOR", "peer_color", "plot_train_metric", "plot_held_out_loss",
           "plot_omega", "plot_parameters_vs", "PLOTS", "make_figures", "save_figure"]

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
    outer = _scalar_series(data.records["outer"], "val_loss")
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


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


