"""How much the second (γ) term of the hypergradient matters, from a finished ``wml compare`` folder.

For every member whose updater took outer steps, each outer record holds the hypergradient g and its
first term ∂L₂/∂ω (``info.direct``); the second term is their difference, −γ⟨…⟩. Mirror descent is
blind to adding a constant to g (ω is renormalised), so both terms are compared after removing their
mean over peers: ratio = ‖second − mean‖ / ‖direct − mean‖, per outer step. Also printed: each method's
ω after training (mean over seeds) and how far the ω trajectories of two methods are apart.

    python benchmarks/compare_terms.py runs/compare-2m [--pair wml,wml_adam]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np


def _records(member: Path) -> list[dict]:
    path = member / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _centered(v) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a - a.mean()


def term_ratios(member: Path) -> list[float]:
    out = []
    for r in _records(member):
        if r.get("kind") != "outer" or r.get("grad") is None or "direct" not in r.get("info", {}):
            continue
        direct = _centered(r["info"]["direct"])
        second = _centered(np.asarray(r["grad"]) - np.asarray(r["info"]["direct"]))
        if np.linalg.norm(direct) > 0:
            out.append(float(np.linalg.norm(second) / np.linalg.norm(direct)))
    return out


def omega_path(member: Path) -> list[list[float]]:
    return [r["omega"] for r in _records(member) if r.get("kind") == "outer" and r.get("omega")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_dir", type=Path)
    ap.add_argument("--pair", default="wml,wml_adam", help="two methods whose ω trajectories are compared")
    args = ap.parse_args()
    plan = json.loads((args.compare_dir / "compare.json").read_text())
    seeds, labels = plan["seeds"], [m["label"] for m in plan["methods"]]
    members = args.compare_dir / "members"
    print("| method | outer steps | ‖second‖/‖first‖ median | 10%–90% | final ω (mean over seeds) |")
    print("|---|---:|---:|---|---|")
    for label in labels:
        ratios, finals, steps = [], [], 0
        for s in seeds:
            member = members / f"{label}-seed{s}"
            r = term_ratios(member)
            ratios += r
            path = omega_path(member)
            steps += len(path)
            summary = member / "summary.json"
            if summary.is_file():
                finals.append(json.loads(summary.read_text())["omega"])
        final = " ".join(f"{x:.3f}" for x in np.mean(finals, axis=0)) if finals else "—"
        if ratios:
            q = np.quantile(ratios, [0.1, 0.9])
            print(f"| {label} | {steps} | {statistics.median(ratios):.3g} | {q[0]:.3g}–{q[1]:.3g} | {final} |")
        else:
            print(f"| {label} | {steps} | — | — | {final} |")
    a, b = args.pair.split(",")
    gaps = []
    for s in seeds:
        pa, pb = omega_path(members / f"{a}-seed{s}"), omega_path(members / f"{b}-seed{s}")
        n = min(len(pa), len(pb))
        if n:
            gaps.append(max(float(np.max(np.abs(np.asarray(pa[k]) - np.asarray(pb[k])))) for k in range(n)))
    if gaps:
        print(f"\nlargest |ω_{a} − ω_{b}| along the trajectory, per seed: " + ", ".join(f"{g:.4f}" for g in gaps))


if __name__ == "__main__":
    main()
