"""What a tuning leaves for people and for ``wml compare --tuned``: the table of trials, the best
settings as a config file, and ``tuned.json`` (the best settings of every method tuned in the folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ... import config as cfgmod
from ...runtime.atomic import atomic_write_json, atomic_write_text
from ..methods import Method
from .plan import TunePlan
from .space import Space, settings_for
from .trial import OBJECTIVE, Trial

__all__ = ["TUNED_FILE", "best_trial", "trials_table", "best_toml", "write_method_outputs", "write_tuned"]

TUNED_FILE = "tuned.json"


def best_trial(trials: Sequence[Trial]) -> Optional[Trial]:
    """The finished trial with the lowest objective (the earlier one on a tie)."""
    done = [t for t in trials if t.status == "done"]
    return min(done, key=lambda t: (t.objective, t.index)) if done else None


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _wall(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def trials_table(method: Method, space: Space, trials: Sequence[Trial], seed: int) -> str:
    """Markdown: one row per trial (its values, objective, trained-ω loss, status, wall time); the best marked."""
    best = best_trial(trials)
    keys = space.keys
    lines = [f"# wml tune: {method.label}", "",
             f"{method.title}; seed {seed}; search space: {space.text()}.", "",
             f"Objective: `{OBJECTIVE}` (summary.json), the held-out loss of the ensemble with ω fitted on the ω half "
             "of the held-out split, on that half; lower is better. The evaluated half is never used. Trained ω: the "
             "same loss with the ω that trained the peers.", "",
             "| trial | how | " + " | ".join(keys) + " | objective | trained ω | status | wall time |",
             "|---|---|" + "---:|" * len(keys) + "---:|---:|---|---:|"]
    for t in sorted(trials, key=lambda t: t.index):
        mark = " **best**" if best is not None and t.index == best.index else ""
        status = t.status if t.status != "failed" else f"failed: {t.failure}"
        objective = "—" if t.objective is None else f"{t.objective:.4f}"
        trained = "—" if t.trained_omega_loss is None else f"{t.trained_omega_loss:.4f}"
        lines.append(f"| {t.name}{mark} | {t.origin} | " + " | ".join(_cell(t.values.get(k, "")) for k in keys)
                     + f" | {objective} | {trained} | {status} | {_wall(t.wall_s)} |")
    return "\n".join(lines) + "\n"


def best_toml(plan: TunePlan, method: Method, best: Trial) -> str:
    """A complete config (shared settings, the method's loss and updater keys, the best values) with a
    header saying where it came from. ``wml run --config`` reruns the best trial with it; ``wml compare
    --config`` takes it as shared settings (each method still sets its own loss and updater)."""
    cfg = cfgmod.from_dict(plan.trial_values(method, settings_for(best.values, plan.base)), check_plugins=False)
    tuned = ", ".join(f"{k} = {_cell(v)}" for k, v in settings_for(best.values, plan.base).items())
    header = [f"# wml tune: the best of {method.label}'s trials ({best.name}, objective {OBJECTIVE} = "
              f"{best.objective:.4f})", f"# tuning folder: {plan.out}", f"# tuned: {tuned}",
              f"# seed = {plan.seed} is the tuning's seed: a comparison of these settings should leave it out",
              "# (wml compare --tuned does, and refuses it otherwise).", ""]
    return "\n".join(header) + cfgmod.dumps(cfg)


def write_method_outputs(plan: TunePlan, method: Method, trials: Sequence[Trial]) -> str:
    """``<method>/trials.md`` and, once a trial has finished, ``<method>/best.toml``; returns the table."""
    table = trials_table(method, plan.spaces[method.label], trials, plan.seed)
    folder = plan.method_dir(method)
    atomic_write_text(folder / "trials.md", table)
    best = best_trial(trials)
    if best is not None:
        atomic_write_text(folder / "best.toml", best_toml(plan, method, best))
    return table


def write_tuned(plan: TunePlan, bests: dict) -> Path:
    """``tuned.json``: for every method tuned in the folder (earlier starts' included), its best
    settings, objective, trial and the seed it was tuned at. ``bests``: {label: (method, best trial or None)}."""
    path = plan.out / TUNED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    for method, best in bests.values():
        if best is None:
            data.pop(method.label, None)
            continue
        data[method.label] = {"settings": settings_for(best.values, plan.base), "values": best.values,
                              "objective": best.objective, "ensemble_omega_half_loss": best.trained_omega_loss,
                              "trial": best.name, "seed": plan.seed, "method": method.to_dict(),
                              "run_dir": str(best.run_dir)}
    atomic_write_json(path, data)
    return path
