"""The comparison's figures: each measure per peer and ensemble, one bar per method, std as error bars."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..runtime.atomic import atomic_write_bytes
from .measures import MEASURES

__all__ = ["write_plots"]

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
    finite = [scale * (m["models"][n][measure]["mean"] + sign * (m["models"][n][measure]["std"] or 0.0))
              for m in methods for n in models for sign in (-1, 1)
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


def _differences(result: dict):
    """Paired differences against the baseline with their 95% intervals, one panel per measure."""
    from matplotlib.figure import Figure

    models = result["models"]
    others = [m for m in result["methods"] if m["label"] != result["baseline"]]
    fig = Figure(figsize=(8.5, 7.0), dpi=130, layout="constrained")
    width = 0.8 / max(1, len(others))
    x = np.arange(len(models))
    for row, measure in enumerate(MEASURES):
        ax = fig.add_subplot(len(MEASURES), 1, row + 1)
        scale = 100.0 if measure == "min_pairs" else 1.0
        for k, m in enumerate(others):
            diffs = [m["models"].get(n, {}).get(measure, {}).get("vs_baseline") or {} for n in models]
            ys = np.array([np.nan if d.get("mean") is None else scale * d["mean"] for d in diffs])
            lo = np.array([0.0 if d.get("low") is None else scale * (d["mean"] - d["low"]) for d in diffs])
            hi = np.array([0.0 if d.get("high") is None else scale * (d["high"] - d["mean"]) for d in diffs])
            ax.errorbar(x + (k - (len(others) - 1) / 2) * width, ys, yerr=[lo, hi], fmt="o", capsize=3,
                        color=_METHOD_COLORS[(k + 1) % len(_METHOD_COLORS)], label=m["label"])
        ax.axhline(0.0, color="#000000", linewidth=0.8)
        ax.set_xticks(x, models)
        spec = MEASURES[measure]
        ax.set_ylabel(f"Δ {spec['title']}" + (" (points)" if scale != 1 else "") + f"\n({spec['better']} is better)")
        ax.grid(True, axis="y", alpha=0.3)
        if row == 0:
            ax.set_title(f"paired difference vs {result['baseline']} (mean and 95% interval over {len(result['seeds'])} seed(s))")
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_plots(folder: Path, result: dict) -> list[Path]:
    """``heldout_loss.png``, ``min_pairs.png`` and ``differences.png`` (PNG, written atomically)."""
    if not result["models"]:
        return []
    written = [_save(_figure(result, measure), Path(folder) / f"{measure}.png") for measure in MEASURES]
    if len(result["methods"]) > 1:
        written.append(_save(_differences(result), Path(folder) / "differences.png"))
    return written
