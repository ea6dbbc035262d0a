"""Reading a comparison's members back and summarising them: per method and model, mean ± std over
seeds of the held-out loss and the minimal-pair macro accuracy, and the paired difference against
the baseline method (same seed, same peer architecture) with its 95% confidence interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..runtime.atomic import atomic_write_json, atomic_write_text
from ..runtime.run_layout import RunLayout
from .measures import MEASURES, MEMBER_MEASURES
from .plan import ComparePlan, Member
from .plots import write_plots
from .stats import mean_std, paired_difference

__all__ = ["member_result", "collect", "markdown", "tuned_section", "write_outputs"]

def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def member_result(member: Member) -> Optional[dict]:
    """What one finished member measured, or None when it is not finished."""
    layout = RunLayout(member.run_dir)
    summary, evaluation = _read(layout.summary), _read(layout.eval_json)
    if summary is None or evaluation is None:
        return None
    trace = _read(layout.init_trace) or {}
    wall = _read(member.run_dir / "compare_member.json") or {}
    models = {}
    for name, entry in evaluation.get("models", {}).items():
        row = {"role": entry.get("role"), "parameters": entry.get("parameters"), "omega": entry.get("omega")}
        for measure, spec in MEASURES.items():
            row[measure] = (entry.get(spec["evaluator"]) or {}).get(spec["key"])
        models[name] = row
    return {"method": member.method.label, "seed": member.seed, "run_dir": str(member.run_dir),
            "tokens": summary.get("tokens"), "steps": summary.get("steps"), "omega": summary.get("omega"),
            "train_s": summary.get("elapsed_s"), "wall_s": wall.get("wall_s"), "sessions": wall.get("sessions"),
            "initial_weights_sha256": trace.get("initial_weights_sha256"), "models": models,
            "measure": summary.get("measure") or "next-token loss",
            **{name: (summary.get("diversity") or {}).get(spec["key"]) for name, spec in MEMBER_MEASURES.items()},
            # both ensembles on the trainer's blocks of the evaluated half (summary.json): trained and fitted ω
            "ensembles": ensembles_of(summary), "eval_omega": evaluation.get("omega_choice", "trained")}


def ensembles_of(summary: dict) -> dict:
    """The trained-ω and fitted-ω ensembles of a finished run and its best peer, all on the trainer's
    fixed blocks of the evaluated half (so they compare); the ω-half losses the fit was made on."""
    peers = [p.get("val_loss") for p in summary.get("peers", []) if p.get("val_loss") is not None]
    return {"trained": summary.get("ensemble_val_loss"), "fitted": summary.get("fitted_ensemble_val_loss"),
            "best_peer": min(peers) if peers else None, "fitted_omega": summary.get("fitted_omega"),
            "trained_omega_half": summary.get("ensemble_omega_half_loss"),
            "fitted_omega_half": summary.get("fitted_ensemble_omega_half_loss")}


def collect(plan: ComparePlan, command: Optional[str] = None) -> dict:
    """``comparison.json``'s content from the members on disk (unfinished ones are listed as missing)."""
    results = {m.name: member_result(m) for m in plan.members}
    done = {k: v for k, v in results.items() if v is not None}
    teacher = next((r["models"]["teacher"] for r in done.values() if "teacher" in r["models"]), None)
    models = _model_names(done)
    methods = []
    for method in plan.methods:
        per_seed = {s: results.get(f"{method.label}-seed{s}") for s in plan.seeds}
        base_seed = {s: results.get(f"{plan.baseline}-seed{s}") for s in plan.seeds}
        rows = {}
        for model in models:
            row = {}
            for measure in MEASURES:
                values = [_value(per_seed[s], model, measure) for s in plan.seeds]
                base = [_value(base_seed[s], model, measure) for s in plan.seeds]
                row[measure] = {"per_seed": values, **mean_std(values)}
                if method.label != plan.baseline:
                    row[measure]["vs_baseline"] = paired_difference(values, base)
            present = [per_seed[s]["models"][model] for s in plan.seeds if per_seed[s] and model in per_seed[s]["models"]]
            row["parameters"] = present[0]["parameters"] if present else None
            row["omega"] = mean_std([p["omega"] for p in present if p.get("omega") is not None])["mean"]
            rows[model] = row
        finished = [r for r in per_seed.values() if r]
        ensembles = {k: mean_std([r["ensembles"][k] for r in per_seed.values() if r and r["ensembles"].get(k) is not None])
                     for k in ("trained", "fitted", "best_peer")}   # ensembles: trained and fitted ω
        methods.append({**method.to_dict(), "models": rows, "ensembles": ensembles,
                        "tokens": mean_std([r["tokens"] for r in finished])["mean"],
                        "wall_s": mean_std([r["wall_s"] for r in finished]),
                        "seeds_finished": len(finished),
                        **_member_measures(per_seed, base_seed, plan, method.label)})
    measure = next((r["measure"] for r in done.values() if r.get("measure")), "next-token loss")
    return {"command": command, "seeds": plan.seeds, "baseline": plan.baseline, "models": models, "measure": measure,
            "teacher": teacher, "teacher_dir": str(plan.teacher_dir), "methods": methods,
            "checks": _checks(plan, results), "members": results,
            "missing": sorted(k for k, v in results.items() if v is None),
            "failed": {m.name: f for m in plan.members if (f := _failure(m)) and results.get(m.name) is None},
            "tuned": plan.tuned,
            "config": {k: plan.base.get(k) for k in ("corpus", "blimp", "max_steps", "batch_size", "block_size",
                                                      "num_batches", "num_peers", "init", "learning_rate")}}


def _member_measures(per_seed: dict, base_seed: dict, plan: ComparePlan, label: str) -> dict:
    """Each member measure over the seeds (mean ± std) and, but for the baseline, paired against it."""
    out = {}
    for name in MEMBER_MEASURES:
        values = [(per_seed[s] or {}).get(name) for s in plan.seeds]
        out[name] = {"per_seed": values, **mean_std(values)}
        if label != plan.baseline:
            out[name]["vs_baseline"] = paired_difference(values, [(base_seed[s] or {}).get(name) for s in plan.seeds])
    return out


def _failure(member: Member) -> Optional[str]:
    return (_read(member.run_dir / "compare_member.json") or {}).get("failed")


def _model_names(done: dict) -> list[str]:
    names: list[str] = []
    for r in done.values():
        for name, row in r["models"].items():
            if row.get("role") in ("peer", "ensemble") and name not in names:
                names.append(name)
    peers = sorted((n for n in names if n != "ensemble"), key=lambda n: int(n.rsplit("_", 1)[-1]) if n.rsplit("_", 1)[-1].isdigit() else 1 << 30)
    return peers + (["ensemble"] if "ensemble" in names else [])


def _value(result: Optional[dict], model: str, measure: str):
    if result is None or model not in result["models"]:
        return None
    return result["models"][model].get(measure)


def _checks(plan: ComparePlan, results: dict) -> dict:
    """Whether the members of each seed really started alike: the same initial peer weights and tokens."""
    same_init, same_tokens = {}, {}
    for s in plan.seeds:
        rows = [results.get(f"{m.label}-seed{s}") for m in plan.methods]
        rows = [r for r in rows if r]
        same_init[str(s)] = len({json.dumps(r["initial_weights_sha256"]) for r in rows}) <= 1 and all(
            r["initial_weights_sha256"] for r in rows)
        same_tokens[str(s)] = len({r["tokens"] for r in rows}) <= 1
    return {"same_initial_weights": same_init, "same_tokens": same_tokens}


# ------------------------------------------------------------------------------------ output

def _pm(stat: dict, scale: float = 1.0, digits: int = 4) -> str:
    if stat.get("mean") is None:
        return "—"
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def _delta(d: Optional[dict], scale: float = 1.0, digits: int = 4) -> str:
    if d is None:
        return "(baseline)"
    if d.get("mean") is None:
        return "—"
    text = f"{scale * d['mean']:+.{digits}f}"
    if d.get("low") is None:
        return text + " (one seed: no interval)"
    interval = f"[{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]"
    return f"{text} {interval}" + (" ≈ noise" if d["within_noise"] else "")


def _member_table(result: dict) -> list[str]:
    """The member measures (evaluation/diversity.py), one row per method."""
    titles = [spec["title"] for spec in MEMBER_MEASURES.values()]
    lines = ["", "| method | " + " | ".join(f"{t} | Δ vs {result['baseline']}" for t in titles) + " |",
             "|---|" + "---|---|" * len(titles)]
    for m in result["methods"]:
        cells = [f"{_pm(m.get(name) or {})} | {_delta((m.get(name) or {}).get('vs_baseline'))}" for name in MEMBER_MEASURES]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    return lines + ["", "Diversity: the Jensen–Shannon divergence between two peers' predictive distributions, "
                    "averaged over the labelled positions of the run's evaluation blocks and over peer pairs "
                    "(0 = identical peers, at most ln 2 ≈ 0.693). Gain: best peer's held-out loss − the ensemble's, "
                    "on the same blocks (> 0: the ensemble beats every peer)."]


def markdown(result: dict) -> str:
    """``comparison.md``: the table, per-method costs and the plots."""
    base = result["baseline"]
    measure = result.get("measure") or "next-token loss"
    loss_title = "held-out loss" if measure == "next-token loss" else f"held-out {measure}"
    lines = ["# wml compare", ""]
    if result.get("command"):
        lines += ["Command:", "", "```", result["command"], "```", ""]
    lines += [f"Seeds: {', '.join(map(str, result['seeds']))}. Baseline of the differences: `{base}` "
              "(paired by seed and peer; 95% confidence interval of the mean difference over seeds, "
              f"Student's t; \"≈ noise\" when it contains 0). {loss_title.capitalize()}: lower is better; minimal "
              "pairs: macro accuracy in %, higher is better.", ""]
    if result["missing"]:
        lines += [f"**Unfinished members** (not in the statistics): {', '.join(result['missing'])}", ""]
    for name, why in result.get("failed", {}).items():
        lines += [f"- {name} failed: {why}"]
    if result.get("failed"):
        lines += [""]
    t = result.get("teacher")
    if t:
        pairs = "—" if t.get("min_pairs") is None else f"{100 * t['min_pairs']:.1f}%"
        loss = "—" if t.get("heldout_loss") is None else f"{t['heldout_loss']:.4f}"
        lines += [f"Teacher ({t.get('parameters'):,} parameters): {loss_title} {loss}, minimal pairs {pairs}.", ""]
    lines += [f"| method | model | params | ω | {loss_title} | Δ vs " + base + " | min. pairs % | Δ vs " + base + " |",
              "|---|---|---:|---:|---|---|---|---|"]
    for m in result["methods"]:
        for model, row in m["models"].items():
            omega = "—" if row.get("omega") is None else f"{row['omega']:.3f}"
            if model == "ensemble":
                omega = f"fitted (trained: {m['ensemble']})" if _eval_omega(result, m) == "fitted" else m["ensemble"]
            params = "" if row.get("parameters") is None else f"{row['parameters']:,}"
            lines.append(f"| {m['label']} | {model} | {params} | {omega} | {_pm(row['heldout_loss'])} | "
                         f"{_delta(row['heldout_loss'].get('vs_baseline'))} | {_pm(row['min_pairs'], 100, 1)} | "
                         f"{_delta(row['min_pairs'].get('vs_baseline'), 100, 1)} |")
    lines += ensembles_table(result, loss_title)
    lines += tuned_section(result)
    lines += ["", "| method | what | tokens per run | wall time per run (s) | seeds finished |", "|---|---|---:|---|---:|"]
    for m in result["methods"]:
        tokens = "—" if m["tokens"] is None else f"{m['tokens']:,.0f}"
        lines.append(f"| {m['label']} | {m['title']} (loss `{m['loss']}`, updater `{m['updater']}`"
                     + "".join(f", {k} `{v}`" for k, v in m["settings"].items())
                     + f") | {tokens} | {_pm(m['wall_s'], 1, 0)} | {m['seeds_finished']} |")
    lines += _member_table(result)
    checks = result["checks"]
    lines += ["", "Same initial peer weights across methods, per seed: "
              + ", ".join(f"seed {s}: {'yes' if v else 'NO'}" for s, v in checks["same_initial_weights"].items())
              + ". Same token count: " + ", ".join(f"seed {s}: {'yes' if v else 'NO'}"
                                                    for s, v in checks["same_tokens"].items()) + ".", ""]
    for name in ("heldout_loss", "min_pairs"):
        lines += [f"![{MEASURES[name]['title']}](plots/{name}.png)", ""]
    if len(result["methods"]) > 1:
        lines += [f"![paired differences vs {base}](plots/differences.png)", ""]
    return "\n".join(lines)


def _eval_omega(result: dict, method: dict) -> str:
    """Which ω ``wml eval`` scored a method's ensemble row with (its members' eval.json)."""
    members = [r for r in result["members"].values() if r and r["method"] == method["label"]]
    return members[0].get("eval_omega", "trained") if members else "trained"


def ensembles_table(result: dict, loss_title: str) -> list[str]:
    """Both ensembles of every method beside its best peer, on the trainer's blocks (summary.json)."""
    lines = ["", f"Ensembles, {loss_title} on the trainer's blocks of the evaluated half: with the ω that trained "
             "the peers, and with ω fitted on the ω half at the end of the run (the ensemble `wml eval` scores).", "",
             "| method | trained ω | fitted ω | best peer |", "|---|---|---|---|"]
    for m in result["methods"]:
        e = m.get("ensembles") or {}
        lines.append(f"| {m['label']} | " + " | ".join(_pm(e.get(k) or {}) for k in ("trained", "fitted", "best_peer")) + " |")
    return lines


def tuned_section(result: dict) -> list[str]:
    """With ``--tuned``: which settings each method ran with, tuned (and where) or the shared ones."""
    tuned = result.get("tuned")
    if not tuned:
        return []
    lines = ["", f"Settings per method: tuned by `wml tune` in `{tuned['dir']}` at seed {tuned['seed']} (left out of "
             "this comparison's seeds); a method not tuned there ran the shared settings.", "",
             "| method | settings | values |", "|---|---|---|"]
    for label, entry in tuned["methods"].items():
        if entry.get("tuned"):
            values = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                               for k, v in entry["settings"].items())
            lines.append(f"| {label} | tuned ({entry.get('trial')}, objective {entry.get('objective', float('nan')):.4f}) "
                         f"| {values} |")
        else:
            lines.append(f"| {label} | not tuned (shared settings) | — |")
    return lines


def write_outputs(out: Path, result: dict) -> list[Path]:
    out = Path(out)
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", markdown(result) + "\n")
    return [out / "comparison.json", out / "comparison.md", *write_plots(out / "plots", result)]
