"""The comparison's figures: each measure per peer and ensemble, one bar per method, std as error bars."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from .results import MEASURES

_METHOD_COLORS = ["#000000", "#1f77b4", "#17becf", "#2ca02c", "#d62728", "#7f7f7f", "#ff7f0e", "#9467bd"]


def _figure(result: dict, measure: str):
    from matplotlib.figure import Figure

    spec = MEASURES[measure]
    scale = 100.0 if measure == "min_pairs" else 1.0
    models, methods = result["models"], result["methods"]
    fig = Figure(figsize=(8.5, 4.6), dpi=130, layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(models))
    for k, m in enumerate(methods):
        means = [m["models"][n][measure]["mean"] if n in m["models"] else None for n in models]
        stds = [m["models"][n][measure]["std"] if n in m["models"] else None for n in models]
        ys = np.array([np.nan if v is None else scale * v for v in means])
        es = np.array([0.0 if v is None else scale * v for v in stds])
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, ys, width, yerr=es, capsize=2,
               color=_METHOD_COLORS[k % len(_METHOD_COLORS)], label=m["label"])
    teacher = (result.get("teacher") or {}).get(measure)
    if teacher is not None:
        ax.axhline(scale * teacher, color="#7f7f7f", linestyle="--", linewidth=1, label="teacher")
    ax.set_xticks(x, models)
    ax.set_ylabel(spec["title"] + (" (%)" if scale != 1 else "") + f" — {spec['better']} is better")
    ax.set_title(f"{spec['title']} by method (mean ± std over {len(result['seeds'])} seed(s))")
    finite = [scale * m["models"][n][measure]["mean"] for m in methods for n in models
              if n in m["models"] and m["models"][n][measure]["mean"] is not None]
    if teacher is not None:
        finite.append(scale * teacher)
    if finite:
        lo, hi = min(finite), max(finite)
        pad = 0.15 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def write_plots(folder: Path, result: dict) -> list[Path]:
    """``heldout_loss.png`` and ``min_pairs.png`` (PNG, written atomically)."""
    written = []
    if not result["models"]:
        return written
    for measure in MEASURES:
        fig = _figure(result, measure)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(Path(folder) / f"{measure}.png", buf.getvalue())
        written.append(Path(folder) / f"{measure}.png")
    return written
