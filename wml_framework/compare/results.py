"""Reading a comparison's members back and summarising them: per method and model, mean ± std over
seeds of the held-out loss and the minimal-pair macro accuracy, and the paired difference against
the baseline method (same seed, same peer architecture) with its 95% confidence interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..evaluation.run_reader import read_jsonl
from ..runtime.atomic import atomic_write_json, atomic_write_text
from ..runtime.run_layout import RunLayout
from .measures import MEASURES, MEMBER_MEASURES
from .plan import ComparePlan, Member
from .plots import write_plots
from .stats import mean_std, paired_difference

__all__ = ["member_result", "teacher_budget", "collect", "markdown", "tuned_section", "write_outputs"]

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
            # the peers' training text: words read (once a step), and what the budget meant (summary.json)
            "words": (summary.get("words") or {}).get("peers"), "budget": summary.get("budget"),
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


def teacher_budget(plan: ComparePlan) -> dict:
    """What the shared teacher trained on, from its records in ``teacher_run/``: tokens, words (as the
    BabyLM rules count them) and steps; None for a teacher the comparison was given (unknown to wml)."""
    spec = plan.base.get("teacher_budget") or ""
    if plan.teacher_given:
        return {"given": True, "spec": spec, "tokens": None, "words": None, "steps": None, "tokens_per_step": None}
    trained = [r for r in read_jsonl(RunLayout(plan.teacher_run).teacher_metrics) if r.get("kind") == "train"]
    last = trained[-1] if trained else {}
    steps, tokens = last.get("step"), last.get("tokens")
    return {"given": False, "spec": spec, "tokens": tokens, "words": last.get("words"), "steps": steps,
            "tokens_per_step": tokens // steps if steps else None}


def _budgets(plan: ComparePlan, results: dict) -> dict:
    """Each method's peers' training text (means over its finished seeds) beside the teacher's, and
    whether the teacher read no more tokens than any method's peers, and as many (within one step of
    the teacher's plus one of the method's: neither can stop between its steps)."""
    teacher = teacher_budget(plan)
    peers = {}
    for method in plan.methods:
        rows = [r for s in plan.seeds if (r := results.get(f"{method.label}-seed{s}"))]
        budgets = [r.get("budget") or {} for r in rows]
        peers[method.label] = {"spec": next((b.get("spec") for b in budgets if b), None),
                               "tokens": mean_std([r["tokens"] for r in rows])["mean"],
                               "words": mean_std([r.get("words") for r in rows])["mean"],
                               "epochs": mean_std([b.get("epochs") for b in budgets])["mean"],
                               "steps": mean_std([r["steps"] for r in rows])["mean"]}
    known = [p for p in peers.values() if p["tokens"] is not None]
    equal = within = None
    if teacher["tokens"] is not None and known:
        step = teacher["tokens_per_step"] or 0
        within = all(teacher["tokens"] <= p["tokens"] for p in known)
        equal = all(abs(teacher["tokens"] - p["tokens"]) < step + p["tokens"] / max(p["steps"], 1) for p in known)
    for p in peers.values():
        p["teacher_words_ratio"] = (teacher["words"] / p["words"] if teacher["words"] is not None and p["words"]
                                    else None)
    return {"peers": peers, "teacher": teacher, "teacher_equals_peers": equal, "teacher_within_peers": within}


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
                        "words": mean_std([r.get("words") for r in finished])["mean"],
                        "epochs": mean_std([(r.get("budget") or {}).get("epochs") for r in finished])["mean"],
                        "wall_s": mean_std([r["wall_s"] for r in finished]),
                        "seeds_finished": len(finished),
                        **_member_measures(per_seed, base_seed, plan, method.label)})
    measure = next((r["measure"] for r in done.values() if r.get("measure")), "next-token loss")
    return {"command": command, "seeds": plan.seeds, "baseline": plan.baseline, "models": models, "measure": measure,
            "teacher": teacher, "teacher_dir": str(plan.teacher_dir), "methods": methods,
            "budgets": _budgets(plan, results),
            "checks": _checks(plan, results), "members": results,
            "missing": sorted(k for k, v in results.items() if v is None),
            "failed": {m.name: f for m in plan.members if (f := _failure(m)) and results.get(m.name) is None},
            "tuned": plan.tuned,
            "config": {k: plan.base.get(k) for k in ("corpus", "blimp", "max_steps", "budget", "teacher_budget",
                                                      "batch_size", "block_size", "num_batches", "num_peers", "init",
                                                      "learning_rate")}}


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


def _trained_alike(rows: list) -> bool:
    """The same tokens; or, where every member had a budget, the same one, each member past it by
    less than one of its steps (a method with larger steps cannot land on the same count)."""
    budgets = [r.get("budget") or {} for r in rows]
    if rows and all(b.get("spec") for b in budgets):
        return (len({(b["spec"], b["target_tokens"]) for b in budgets}) == 1
                and all(0 <= r["tokens"] - b["target_tokens"] < b["tokens_per_step"] for r, b in zip(rows, budgets)))
    return len({r["tokens"] for r in rows}) <= 1


def _checks(plan: ComparePlan, results: dict) -> dict:
    """Whether the members of each seed really started alike: the same initial peer weights and tokens
    (with a budget: the same budget)."""
    same_init, same_tokens = {}, {}
    for s in plan.seeds:
        rows = [results.get(f"{m.label}-seed{s}") for m in plan.methods]
        rows = [r for r in rows if r]
        same_init[str(s)] = len({json.dumps(r["initial_weights_sha256"]) for r in rows}) <= 1 and all(
            r["initial_weights_sha256"] for r in rows)
        same_tokens[str(s)] = _trained_alike(rows)
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
    lines += budget_lines(result)
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
    lines += ["", "| method | what | tokens per run | words per run | epochs | wall time per run (s) | seeds finished |",
              "|---|---|---:|---:|---:|---|---:|"]
    for m in result["methods"]:
        tokens = "—" if m["tokens"] is None else f"{m['tokens']:,.0f}"
        words = "—" if m.get("words") is None else f"{m['words']:,.0f}"
        epochs = "—" if m.get("epochs") is None else f"{m['epochs']:.2f}"
        lines.append(f"| {m['label']} | {m['title']} (loss `{m['loss']}`, updater `{m['updater']}`"
                     + "".join(f", {k} `{v}`" for k, v in m["settings"].items())
                     + f") | {tokens} | {words} | {epochs} | {_pm(m['wall_s'], 1, 0)} | {m['seeds_finished']} |")
    lines += preset_lines(result)
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


def budget_lines(result: dict) -> list[str]:
    """The teacher's training text beside each method's peers', in words (the BabyLM rules count words,
    teacher included), and whether the two are equal."""
    b = result.get("budgets")
    if not b:
        return []
    t = b["teacher"]
    spec = f"teacher_budget {t['spec']!r}" if t.get("spec") else "teacher_steps"
    if t.get("given"):
        teacher = "a given teacher (its training words are not known to wml)"
    elif t.get("words") is None:
        teacher = "the teacher: not trained yet"
    else:
        teacher = f"teacher {t['words']:,} words ({t['tokens']:,} tokens, {t['steps']:,} steps; {spec})"
    peers = "; ".join(f"`{label}` {p['words']:,.0f} words ({p['tokens']:,.0f} tokens"
                      + (f", {p['epochs']:.2f} epochs" if p.get("epochs") is not None else "")
                      + (f", budget {p['spec']!r}" if p.get("spec") else "") + ")"
                      for label, p in b["peers"].items() if p.get("words") is not None)
    line = f"Training text, per run: {teacher}; peers (every peer reads the step's batch: counted once) {peers or '—'}."
    if b.get("teacher_equals_peers"):
        line += " The teacher read as many tokens as one peer's budget (within a step of each), no more."
    elif b.get("teacher_within_peers"):
        line += " The teacher read fewer tokens than the peers."
    elif b.get("teacher_within_peers") is False:
        ratio = max((p["teacher_words_ratio"] for p in b["peers"].values() if p.get("teacher_words_ratio")), default=None)
        line += (f" The teacher read MORE than the peers ({ratio:.2f}× a peer's words at most)" if ratio else
                 " The teacher read MORE tokens than the peers") + "; `teacher_budget = \"peers\"` holds them equal."
    return [line, ""]


def preset_lines(result: dict) -> list[str]:
    """For a method taken from a preset (``wml_champion``): the preset's keys it used, and those it left
    out with why."""
    lines = []
    for m in result["methods"]:
        if not m.get("preset"):
            continue
        used = ", ".join(f"{k} `{m['settings'][k]}`" for k in m.get("from_preset", []))
        others = ", ".join(f"{k} `{v}`" for k, v in m["settings"].items() if k not in m.get("from_preset", []))
        left = "; ".join(f"{k} ({why})" for k, why in m.get("left_out", {}).items())
        lines += ["", f"`{m['label']}` takes the `{m['preset']}` preset's settings: {used}"
                  + (f"; not in the preset: {others}" if others else "") + f". Left out: {left}."]
    return lines


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
