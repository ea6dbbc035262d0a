"""Scoring a model folder or a whole run: every peer, the ensemble and the teacher.

:func:`evaluate` runs every requested evaluator plugin on each model and returns the
``eval.json`` dictionary; ``wml eval`` prints it and ``wml run`` calls it at the end. The
evaluators come from the plugin registry by name and are treated alike: each scores each model,
may add a summary shared by all models, may report warnings, and may say how its result reads
in a table (``columns``) and in detail (``details``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import config as cfgmod
from ..plugin_system.host import PluginError, PluginHost, get_host, resolve_options
from ..runtime.atomic import atomic_write_text
from ..runtime.run_layout import RunLayout, is_model_dir, is_run_dir
from ..runtime.threads import parse_threads
from ..text.tokenizer import load_tokenizer as _load_tokenizer
from .models import count_parameters, load_model, resolve_device
from .run_reader import load_run

__all__ = ["DISPLAY", "EvaluationError", "choose_threads", "make_evaluators", "evaluate", "headline",
           "write_eval_json", "merge_eval_results", "same_models", "weights_stamp",
           "default_json_path"]

DISPLAY = "display"  # the part of the result that is for printing, not for eval.json


class EvaluationError(ValueError):
    """The thing to evaluate is not a model or run, or an evaluator cannot score it."""


def _echo_err(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def choose_threads(spec: str | int | None) -> int:
    """CPU threads for scoring: a number, or 'auto'. 'auto' keeps torch's choice on an idle
    machine but drops to one thread when the 1-minute load average already fills every core:
    on a shared CPU, torch's threads then wait on each other at every small operation
    (measured: 2 threads 3-5x slower than 1 on this project's 2-core machine under load)."""
    import torch

    n = parse_threads(spec)
    if n is not None:
        return n
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without a load average
        busy = 0.0
    return 1 if busy >= cores else torch.get_num_threads()


def _base_config(run_dir: Path | None, log: Callable[[str], None]) -> cfgmod.WMLConfig:
    """The run's resolved config (its known keys; a bad file falls back to defaults)."""
    if run_dir is not None and RunLayout(run_dir).config.is_file():
        try:
            raw = cfgmod.read_toml(RunLayout(run_dir).config)
            values = {k: v for k, v in raw.items() if k in cfgmod.FIELDS or k in cfgmod.ALIASES}
            return cfgmod.from_dict(values, check_plugins=False)
        except cfgmod.ConfigError as exc:
            log(f"warning: {RunLayout(run_dir).config} ignored ({exc}); using defaults")
    return cfgmod.from_dict({}, check_plugins=False)


def _scorers(path: Path, device, log, teacher: bool = True, omega: str = "fitted") -> tuple[list[dict], dict]:
    """(name, role, model, tokenizer, path, ω) of everything to score, and facts about the run."""

    def load_tokenizer(folder):
        try:
            return _load_tokenizer(folder)
        except (OSError, ValueError, TypeError) as exc:
            raise EvaluationError(f"{str(folder)!r} has no usable tokenizer ({type(exc).__name__}); save the "
                                  "tokenizer beside the model to evaluate it") from None

    if is_run_dir(path):
        log(f"loading run {path}")
        run = load_run(path, device, load_teacher=teacher, omega=omega)
        rows = [dict(name=n, role="peer", model=m, tokenizer=run.tokenizer, path=str(d), omega=float(w))
                for n, m, d, w in zip(run.peer_names, run.peers, run.peer_dirs, run.omega)]
        rows.append(dict(name="ensemble", role="ensemble", model=run.ensemble(), tokenizer=run.tokenizer,
                         path=str(RunLayout(path).peers), omega=None, members=run.peer_names))
        if run.teacher is not None:
            rows.append(dict(name="teacher", role="teacher", model=run.teacher,
                             tokenizer=load_tokenizer(run.teacher_dir), path=str(run.teacher_dir), omega=None))
        facts = {"kind": "run", "peer_names": run.peer_names, "omega": run.omega.tolist(),
                 "omega_source": run.omega_source, "omega_choice": run.omega_kind, "champion": run.summary.get("champion")}
        return rows, facts
    if is_model_dir(path):
        log(f"loading model {path}")
        try:
            model = load_model(path, device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EvaluationError(f"{str(path)!r} cannot be loaded as a causal LM: {str(exc).splitlines()[0]}") from None
        return [dict(name=path.name, role="model", model=model, tokenizer=load_tokenizer(path),
                     path=str(path), omega=None)], {"kind": "model"}
    raise EvaluationError(f"{str(path)!r} is neither a run folder (with peers/) nor a Hugging Face model folder (with config.json)")


def make_evaluators(cfg: cfgmod.WMLConfig, names: Sequence[str], host: PluginHost, log) -> dict:
    """Each named evaluator made from ``cfg`` and its options; a factory returning None has
    nothing to score under this configuration and is skipped."""
    active = {}
    for name in names:
        evaluator = host.create("evaluator", name, cfg, options=cfg.plugin_options(name))
        if evaluator is None:
            log(f"{name}: skipped (nothing to score with this configuration)")
            continue
        if not callable(evaluator):
            entry = host.get("evaluator", name)
            raise PluginError.creating(entry, f"the object its factory made is not callable: {evaluator!r}")
        active[name] = evaluator
    return active


def evaluate(path: str | Path, *, blimp: str | None = None, corpus: str | None = None, limit: int | None = None,
             block_size: int | None = None, settings: Optional[dict] = None, device: str = "auto",
             evaluators: Optional[Sequence[str]] = None, progress: bool | None = None,
             log: Callable[[str], None] = _echo_err, host: Optional[PluginHost] = None,
             teacher: bool = True, omega: str = "fitted") -> dict:
    """Score a model folder or every peer, the ensemble and the teacher of a run folder.

    ``blimp``/``corpus`` default to the run's config (or the shipped sample and corpus); 'none'
    skips what needs them. ``settings`` are further config keys or plugin options
    (``{"perplexity.max_blocks": 4}``). Returns the ``eval.json`` dictionary (plus a ``display``
    part for printing, which :func:`write_eval_json` leaves out). ``evaluators``: names of
    evaluator plugins to run; default: every registered one. ``teacher=False`` leaves a run's
    teacher out (``wml compare`` scores its one teacher once). ``omega``: which ω a run's ensemble
    mixes its peers with, ``fitted`` (at the end of the run, on the ω half) or ``trained``."""
    host = host or get_host()
    path = Path(path).expanduser()
    run_dir = path if is_run_dir(path) else None
    base = _base_config(run_dir, log)
    changes: dict[str, Any] = dict(settings or {})
    for key, value in (("corpus", corpus), ("blimp", blimp), ("blimp_limit", limit), ("block_size", block_size)):
        if value is not None:
            changes[key] = value
    specs = host.option_specs()
    for key in changes:
        name = key.partition(".")[0]
        if "." in key and name not in specs:
            raise cfgmod.ConfigError(f"unknown plugin option namespace {name!r}{cfgmod.close_matches(name, specs)} "
                                     f"(plugins with options: {', '.join(sorted(specs)) or 'none'})")
    cfg = cfgmod.from_dict({**base.to_dict(), **changes}, check_plugins=False)

    active = make_evaluators(cfg, list(evaluators) if evaluators else host.names("evaluator"), host, log)
    dev = resolve_device(device)
    rows, facts = _scorers(path, dev, log, teacher, omega)
    for name, evaluator in active.items():
        for warning in (evaluator.warnings() if callable(getattr(evaluator, "warnings", None)) else []):
            log(f"warning: {warning}")

    models: dict[str, dict] = {}
    columns: dict[str, dict] = {}
    for row in rows:
        entry = {k: row[k] for k in ("role", "path", "omega") if row.get(k) is not None}
        if "members" in row:
            entry["members"] = row["members"]
        entry["parameters"] = count_parameters(row["model"])
        entry["weights"] = _row_stamp(row, rows)
        entry["seconds"] = {}
        columns[row["name"]] = {}
        for name, evaluator in active.items():
            start = time.perf_counter()
            extra = {"name": row["name"]} if _takes(evaluator, "name") else {}
            try:
                result = evaluator(row["model"], row["tokenizer"], device=dev, progress=progress,
                                   desc=f"{row['name']} {name}", **extra)
            except ValueError as exc:
                raise EvaluationError(f"evaluator {name!r} on {row['name']}: {exc}") from None
            entry["seconds"][name] = round(time.perf_counter() - start, 3)
            entry[name] = result
            if callable(getattr(evaluator, "columns", None)):
                columns[row["name"]].update(evaluator.columns(result))
        models[row["name"]] = entry

    details: list[str] = []
    for name, evaluator in active.items():
        if callable(getattr(evaluator, "details", None)):
            details += evaluator.details({m: e[name] for m, e in models.items() if name in e})
    out = {"path": str(path), **facts, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "settings": {"device": str(dev), "evaluators": list(active),
                        "config": {k: v for k, v in cfg.to_dict().items() if k in changes or k in (
                            "corpus", "blimp", "blimp_limit", "block_size", "val_fraction")},
                        "options": {n: resolve_options(host.get("evaluator", n), cfg.plugin_options(n))
                                    for n in active if host.get("evaluator", n).options}},
           "models": models}
    for name, evaluator in active.items():
        if callable(getattr(evaluator, "summary", None)):
            out[name] = evaluator.summary()
    out[DISPLAY] = {"columns": columns, "details": details}
    return out


def _takes(fn, keyword: str) -> bool:
    """Whether a callable accepts ``keyword`` (optional arguments of the Evaluator protocol)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def headline(result: dict, model: str) -> str:
    """One line per model: the cells every evaluator contributed to the table."""
    cells = result.get(DISPLAY, {}).get("columns", {}).get(model, {})
    return "  ".join(f"{k} {v}" for k, v in cells.items())


def write_eval_json(target: Path, result: dict) -> None:
    """Atomically, keeping the models in evaluation order (peers, ensemble, teacher), and merged into
    the file already there: an evaluator run alone (``wml eval RUN --evaluator top5_entropy``) adds its
    results and never drops another evaluator's. ``settings.by_evaluator`` says when, and with which
    settings, each evaluator's numbers were made."""
    target = Path(target)
    clean = {k: v for k, v in result.items() if k != DISPLAY}
    clean["settings"] = {**clean.get("settings", {}), "by_evaluator": _provenance(clean)}
    atomic_write_text(target, json.dumps(merge_eval_results(_read_existing(target), clean), indent=2) + "\n")


WEIGHT_FILES = ("*.safetensors", "*.bin")


def weights_stamp(folders: Sequence[Path], omega: Optional[Sequence[float]] = None) -> str:
    """What identifies the weights a result was computed from, cheaply: the name, size and
    modification time of each weight file (an export rewrites them; a copy with ``cp -p`` keeps them),
    and for an ensemble its ω. Results of other weights are never merged into a file's (:func:`merge_eval_results`)."""
    h = hashlib.sha256()
    for folder in folders:
        for pattern in WEIGHT_FILES:
            for f in sorted(folder.glob(pattern)):
                st = f.stat()
                h.update(f"{folder.name}/{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    if omega is not None:
        h.update(repr([round(float(w), 12) for w in omega]).encode())
    return h.hexdigest()[:16]


def _row_stamp(row: dict, rows: list[dict]) -> str:
    """A model's :func:`weights_stamp`; an ensemble's covers its members and their ω."""
    if "members" not in row:
        return weights_stamp([Path(row["path"])])
    members = [r for r in rows if r["name"] in row["members"]]
    return weights_stamp([Path(r["path"]) for r in members], [r["omega"] for r in members])


def _provenance(result: dict) -> dict:
    settings = result.get("settings", {})
    shared = {k: settings[k] for k in ("device", "threads", "config") if k in settings}
    return {name: {"created": result.get("created"), **shared, "options": settings.get("options", {}).get(name, {})}
            for name in settings.get("evaluators", [])}


def _read_existing(target: Path) -> Optional[dict]:
    try:
        old = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None                    # none yet, or unreadable: nothing to keep
    return old if isinstance(old, dict) and isinstance(old.get("models"), dict) else None


def same_models(old: dict, new: dict) -> bool:
    """Whether two results scored the same folder and, for every model both scored, the same weights:
    a run resumed and trained further, or another folder written to the same ``--json-out``, starts
    the file afresh (its earlier numbers describe weights that are gone)."""
    if old.get("path") != new.get("path"):
        return False
    both = set(old["models"]) & set(new["models"])
    return all(old["models"][m].get("weights") == new["models"][m].get("weights") for m in both)


def merge_eval_results(old: Optional[dict], new: dict) -> dict:
    """``new`` over ``old``: the evaluators ``new`` ran replace theirs, every other evaluator's results
    stay, per model and in the file's summary sections; models only ``old`` scored stay too. When
    the two did not score the same models (:func:`same_models`), ``new`` alone."""
    if old is None or not same_models(old, new):
        return new
    ran = set(new.get("settings", {}).get("evaluators", []))
    kept = [n for n in old.get("settings", {}).get("evaluators", []) if n not in ran]
    merged = {**{k: v for k, v in old.items() if k in kept}, **new}
    models = {}
    for name in [*new["models"], *(m for m in old["models"] if m not in new["models"])]:
        before, now = old["models"].get(name, {}), new["models"].get(name)
        if now is None:
            models[name] = before
            continue
        entry = {**{k: v for k, v in before.items() if k in kept}, **now}
        entry["seconds"] = {**{k: v for k, v in before.get("seconds", {}).items() if k in kept},
                            **now.get("seconds", {})}
        models[name] = entry
    merged["models"] = models
    settings = dict(new.get("settings", {}))
    settings["evaluators"] = [*kept, *new.get("settings", {}).get("evaluators", [])]
    settings["by_evaluator"] = {**{k: v for k, v in old.get("settings", {}).get("by_evaluator", {}).items()
                                   if k in kept}, **settings.get("by_evaluator", {})}
    merged["settings"] = settings
    return merged


def default_json_path(path: Path) -> Path:
    """``eval.json`` inside the run folder, or inside the model folder."""
    return RunLayout(path).eval_json
