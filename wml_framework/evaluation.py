"""Scoring a model folder or a whole run: every peer, the ensemble and the teacher.

:func:`evaluate` runs every requested evaluator plugin on each model and returns the
``eval.json`` dictionary; ``wml eval`` prints it and ``wml run`` calls it at the end.
The evaluators come from the plugin registry by name, so a third-party evaluator runs
through the same loop and lands in the same ``eval.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from . import config as cfgmod
from .io import atomic_write_text

DEFAULT_EVALUATORS = ("perplexity", "minimal_pairs")
SKIP = ("", "none")


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def choose_threads(spec: str | int | None) -> int:
    """CPU threads for scoring: a number, or 'auto'. 'auto' keeps torch's choice on an idle
    machine but drops to one thread when the 1-minute load average already fills every core:
    on a shared CPU, torch's threads then wait on each other at every small operation
    (measured: 2 threads 3-5x slower than 1 on this project's 2-core machine under load)."""
    import os

    import torch

    if spec in (None, "", "auto"):
        cores = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0]
        except OSError:  # pragma: no cover - platforms without a load average
            busy = 0.0
        return 1 if busy >= cores else torch.get_num_threads()
    n = int(spec)
    if n < 1:
        raise click.BadParameter(f"threads must be ≥ 1 or 'auto', got {spec!r}", param_hint="--threads")
    return n


def _base_config(run_dir: Path | None, log: Callable[[str], None]) -> cfgmod.WMLConfig:
    """The run's resolved config (its known keys; a bad file falls back to defaults)."""
    values: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "config.toml").is_file():
        try:
            raw = cfgmod.tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
            values = {k: v for k, v in raw.items() if k in cfgmod.FIELDS}
            return cfgmod.from_dict(values, check_plugins=False)
        except (cfgmod.tomllib.TOMLDecodeError, cfgmod.ConfigError) as exc:
            log(f"warning: {run_dir / 'config.toml'} ignored ({exc}); using defaults")
    return cfgmod.from_dict({}, check_plugins=False)


def _scorers(path: Path, device, log) -> tuple[list[dict], dict]:
    """(name, role, model, tokenizer, path, ω) of everything to score, and facts about the run."""
    from . import scoring

    if scoring.is_run_dir(path):
        log(f"loading run {path}")
        run = scoring.load_run(path, device)
        rows = [dict(name=n, role="peer", model=m, tokenizer=run.tokenizer, path=str(d), omega=float(w))
                for n, m, d, w in zip(run.peer_names, run.peers, run.peer_dirs, run.omega)]
        rows.append(dict(name="ensemble", role="ensemble", model=run.ensemble(), tokenizer=run.tokenizer,
                         path=str(path / "peers"), omega=None, members=run.peer_names))
        if run.teacher is not None:
            rows.append(dict(name="teacher", role="teacher", model=run.teacher,
                             tokenizer=scoring.load_tokenizer(run.teacher_dir), path=str(run.teacher_dir), omega=None))
        facts = {"kind": "run", "peer_names": run.peer_names, "omega": run.omega.tolist(),
                 "omega_source": run.omega_source, "champion": run.summary.get("champion")}
        return rows, facts
    if scoring.is_model_dir(path):
        log(f"loading model {path}")
        model = scoring.load_model(path, device)
        return [dict(name=path.name, role="model", model=model, tokenizer=scoring.load_tokenizer(path),
                     path=str(path), omega=None)], {"kind": "model"}
    raise click.UsageError(f"{str(path)!r} is neither a run folder (with peers/) nor a Hugging Face model folder (with config.json)")


def evaluate(path: str | Path, *, blimp: str | None = None, corpus: str | None = None, limit: int | None = None,
             block_size: int | None = None, max_blocks: int | None = None, batch_size: int = 64,
             ppl_batch_size: int = 8, device: str = "auto", evaluators: Sequence[str] = DEFAULT_EVALUATORS,
             progress: bool | None = None, log: Callable[[str], None] = _echo_err) -> dict:
    """Score a model folder or every peer, the ensemble and the teacher of a run folder.

    ``blimp``/``corpus`` default to the run's config (or the shipped sample and corpus);
    'none' skips that evaluator. Returns the ``eval.json`` dictionary."""
    from . import scoring
    from .plugins import PluginError, get_host

    path = Path(path).expanduser()
    run_dir = path if scoring.is_run_dir(path) else None
    base = _base_config(run_dir, log)
    changes: dict[str, Any] = {}
    if corpus is not None:
        changes["corpus"] = corpus
    if blimp is not None:
        changes["blimp"] = blimp
    if limit is not None:
        changes["blimp_limit"] = limit
    if block_size is not None:
        changes["block_size"] = block_size
    try:
        cfg = cfgmod.from_dict({**base.to_dict(), **changes}, check_plugins=False)
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    skipped = {"perplexity": cfg.corpus.strip().lower() in SKIP, "minimal_pairs": cfg.blimp.strip().lower() in SKIP}
    options = {"perplexity": dict(batch_size=ppl_batch_size, max_blocks=max_blocks, log=log),
               "minimal_pairs": dict(batch_size=batch_size)}
    host = get_host()
    active = {}
    for name in evaluators:
        if skipped.get(name):
            log(f"{name}: skipped")
            continue
        try:
            active[name] = host.create("evaluator", name, cfg, **options.get(name, {}))
        except PluginError as exc:
            raise click.ClickException(str(exc)) from None

    dev = scoring.resolve_device(device)
    rows, facts = _scorers(path, dev, log)
    pair_set = getattr(active.get("minimal_pairs"), "pairs", None)
    for bad in (pair_set.malformed if pair_set else []):
        log(f"warning: {bad['file']}:{bad['line']}: malformed minimal pair skipped ({bad['reason']})")

    models: dict[str, dict] = {}
    for row in rows:
        entry = {k: row[k] for k in ("role", "path", "omega") if row.get(k) is not None}
        if "members" in row:
            entry["members"] = row["members"]
        entry["parameters"] = scoring.count_parameters(row["model"])
        entry["seconds"] = {}
        for name, evaluator in active.items():
            start = time.perf_counter()
            try:
                result = evaluator(row["model"], row["tokenizer"], device=dev, progress=progress,
                                   desc=f"{row['name']} {name}")
            except ValueError as exc:
                raise click.ClickException(f"evaluator {name!r} on {row['name']}: {exc}") from None
            entry["seconds"][name] = round(time.perf_counter() - start, 3)
            if name == "minimal_pairs":
                result = {k: v for k, v in result.items() if k not in ("malformed", "source")}
            entry[name] = result
        models[row["name"]] = entry

    settings = {"corpus": None if skipped["perplexity"] else cfg.corpus, "val_fraction": cfg.val_fraction,
                "blimp": None if skipped["minimal_pairs"] else str(getattr(active.get("minimal_pairs"), "source", cfg.blimp)),
                "limit": cfg.blimp_limit or None, "block_size": cfg.block_size, "max_blocks": max_blocks,
                "batch_size": batch_size, "ppl_batch_size": ppl_batch_size, "device": str(dev),
                "evaluators": list(active)}
    out = {"path": str(path), **facts, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "settings": settings, "models": models}
    if "minimal_pairs" in active:
        pairs = active["minimal_pairs"].pairs
        out["minimal_pairs"] = {"source": [str(f) for f in pairs.files], "pairs": len(pairs.pairs),
                                "malformed": pairs.malformed}
    return out


def write_eval_json(target: Path, result: dict) -> None:
    """Atomically, keeping the models in evaluation order (peers, ensemble, teacher)."""
    atomic_write_text(Path(target), json.dumps(result, indent=2) + "\n")


def default_json_path(path: Path) -> Path:
    """``eval.json`` inside the run folder, or inside the model folder."""
    return Path(path) / "eval.json"
