"""What a run folder holds, read for the report: records, summary, evaluation, ω, result rows.

Copes with any file missing or partial; every gap becomes a note the report prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..evaluation.run_reader import read_json, read_jsonl, run_omega
from ..runtime.run_layout import RunLayout

__all__ = ["RunData", "load_run_data", "Row", "LOSS_FIELDS", "ACCURACY_FIELDS", "evaluator_with",
           "result_rows"]


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

    @property
    def measure(self) -> str:
        """What the held-out loss is: ``next-token loss``, or the objective's own (``masked-token loss``)."""
        return self.summary.get("measure") or "next-token loss"


def load_run_data(run_dir: str | Path) -> RunData:
    """Everything the report needs, with a note for each thing that is missing or broken."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    notes: list[str] = []
    summary = read_json(layout.summary)
    if not summary:
        notes.append("summary.json is missing or unreadable: parameters, shapes and training losses come from elsewhere or are left out.")
    evaluation = read_json(layout.eval_json)
    if not evaluation:
        notes.append("eval.json is absent, so minimal-pair accuracy is left out (run `wml eval RUN_DIR` to add it).")
    bad_lines: list[int] = []
    rows = read_jsonl(layout.metrics, on_error=lambda n, _msg: bad_lines.append(n))
    if not layout.metrics.is_file():
        notes.append("metrics.jsonl is missing: no training curves.")
    if bad_lines:
        notes.append(f"metrics.jsonl: {len(bad_lines)} unreadable line(s) skipped (first: line {bad_lines[0]}).")
    records = {kind: [r for r in rows if r.get("kind") == kind and isinstance(r.get("step"), (int, float))]
               for kind in ("train", "outer", "eval")}
    names = [p["name"] for p in summary.get("peers", []) if isinstance(p, dict) and "name" in p]
    if not names and evaluation:
        names = [n for n, m in evaluation.get("models", {}).items() if m.get("role") == "peer"]
    if not names:
        names = [p.name for p in layout.peer_dirs()]
    if not names:
        width = max((len(r.get("ce", [])) for r in records["train"]), default=0)
        names = [f"peer_{i}" for i in range(width)]
    omega, source = (run_omega(run_dir, len(names), "trained") if names else (None, "none"))
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


#: what a result must hold to fill the report's columns (the conventions of docs/plugins.md)
LOSS_FIELDS = ("loss", "ppl")
ACCURACY_FIELDS = ("macro_accuracy", "pairs")


def evaluator_with(evaluation: dict, fields: tuple) -> str | None:
    """The first evaluator (in ``settings.evaluators`` order) whose results carry ``fields``: the
    report reads held-out loss and minimal-pair accuracy by the shape of a result, not by name."""
    models = evaluation.get("models", {}) if evaluation else {}
    for name in evaluation.get("settings", {}).get("evaluators", []) if evaluation else []:
        if any(isinstance(m.get(name), dict) and all(f in m[name] for f in fields) for m in models.values()):
            return name
    return None


def result_rows(data: RunData) -> tuple[list[Row], str, str]:
    """Peers, ensemble and teacher with their numbers, plus where loss and accuracy came from."""
    models = data.evaluation.get("models", {}) if data.evaluation else {}
    speers = {p.get("name"): p for p in data.summary.get("peers", []) if isinstance(p, dict)}
    loss_key, acc_key = evaluator_with(data.evaluation, LOSS_FIELDS), evaluator_with(data.evaluation, ACCURACY_FIELDS)
    loss_from_eval = loss_key is not None
    rows = []
    for i, name in enumerate(data.names):
        sp, em = speers.get(name, {}), models.get(name, {})
        rows.append(_row(name, "peer", sp, em, None if data.omega is None else float(data.omega[i]), loss_key, acc_key))
    teacher_summary = data.summary.get("teacher") if isinstance(data.summary.get("teacher"), dict) else {}
    # two ensembles: with the trained ω and with the fitted ω; eval.json scored one of them (`omega_choice`)
    scored = (data.evaluation.get("omega_choice", "trained") if data.evaluation else "trained")
    fitted_loss = data.summary.get("fitted_ensemble_val_loss")
    kinds = [("trained", "ensemble", data.summary.get("ensemble_val_loss"))]
    if fitted_loss is not None or scored == "fitted":
        kinds.append(("fitted", "ensemble, fitted ω", fitted_loss))
    for kind, name, loss in kinds:
        mine = kind == scored
        ens = _row(name if mine or not loss_key else f"{name} (trainer's loss)", "ensemble", {"val_loss": loss},
                   models.get("ensemble", {}) if mine else {}, None, loss_key if mine else None, acc_key)
        if ens.parameters is None and all(r.parameters for r in rows) and rows:
            ens.parameters = sum(r.parameters for r in rows if r.role == "peer")
        rows.append(ens)
    if teacher_summary or "teacher" in models:
        rows.append(_row("teacher", "teacher", teacher_summary or {}, models.get("teacher", {}), None, loss_key, acc_key))
    if loss_from_eval:
        setting = data.evaluation.get("settings", {}).get("config", {})
        loss_source = (f"`wml eval`'s `{loss_key}` evaluator (the evaluated half of the held-out split of corpus "
                       f"`{setting.get('corpus')}`, block size {setting.get('block_size')})")
    elif any(r.loss is not None for r in rows):
        loss_source = "the trainer's last held-out evaluation (summary.json: evaluated half of the held-out split)"
    else:
        loss_source = "not available"
    mp = data.evaluation.get(acc_key, {}) if acc_key else {}
    acc_source = (f"`wml eval`'s `{acc_key}` evaluator ({mp.get('pairs')} pairs from {len(mp.get('source', []))} file(s), "
                  "macro average over paradigms)"
                  if any(r.accuracy is not None for r in rows) else "not available (no eval.json, or it has no minimal-pair results)")
    return rows, loss_source, acc_source


def _row(name: str, role: str, summary_part: dict, eval_part: dict, omega: float | None, loss_key: str | None,
         acc_key: str | None) -> Row:
    row = Row(name, role, omega=omega)
    row.parameters = summary_part.get("parameters") or eval_part.get("parameters")
    row.shape = summary_part.get("shape")
    if loss_key:
        ppl = eval_part.get(loss_key) or {}
        row.loss, row.ppl = ppl.get("loss"), ppl.get("ppl")
    elif isinstance(summary_part.get("val_loss"), (int, float)):
        row.loss = float(summary_part["val_loss"])
        row.ppl = math.exp(row.loss) if row.loss < 700 else float("inf")
    mp = (eval_part.get(acc_key) or {}) if acc_key else {}
    row.accuracy, row.pairs = mp.get("macro_accuracy"), mp.get("pairs")
    return row


