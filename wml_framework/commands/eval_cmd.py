"""``wml eval``: perplexity and minimal-pair accuracy of a model, or of a run's peers, ensemble and teacher.

:func:`evaluate` does the work without click (the trainer calls it at the end of a run);
the evaluators come from the plugin registry by name, so a third-party evaluator runs
through the same loop and lands in the same ``eval.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from .. import config as cfgmod
from ..cli_types import PluginName
from ..io import atomic_write_text

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
    from .. import scoring

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
    from .. import scoring
    from ..plugins import PluginError, get_host

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


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def format_table(result: dict) -> str:
    """The summary table (one row per model) and, when scored, accuracy per paradigm."""
    models = result["models"]
    head = ["model", "params", "ω", "held-out loss", "ppl", "min. pairs (macro)", "pairs"]
    rows = []
    for name, m in models.items():
        ppl, mp = m.get("perplexity") or {}, m.get("minimal_pairs") or {}
        label = name + (" ★" if name == result.get("champion") else "")
        rows.append([label, _params(m.get("parameters")), _fmt(m.get("omega"), ".3f"), _fmt(ppl.get("loss"), ".4f"),
                     _fmt(ppl.get("ppl"), ".2f"), _percent(mp.get("macro_accuracy")), str(mp.get("pairs", "—"))])
    lines = _grid(head, rows)
    first = next((m.get("minimal_pairs") for m in models.values() if m.get("minimal_pairs")), None)
    if first:
        key = "uids" if first.get("paradigm_key") == "UID" else "files"
        paradigms = list(first[key])
        names = list(models)
        prow = [[p] + [_fmt(100 * models[n]["minimal_pairs"][key][p]["accuracy"], ".1f") if models[n].get("minimal_pairs") else "—"
                       for n in names] for p in paradigms]
        lines += ["", f"minimal-pair accuracy (%) per paradigm ({first['paradigm_key']}):"]
        lines += _grid(["paradigm", *names], prow)
    return "\n".join(lines)


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(head), "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]


@click.command("eval")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--blimp", help="Folder (or file) of minimal-pair .jsonl files; 'default': the sample shipped; 'none': skip.  [default: the run's setting, else 'default']")
@click.option("--corpus", help="Corpus whose held-out split gives perplexity; 'default': the one shipped; 'none': skip.  [default: the run's setting, else 'default']")
@click.option("--limit", type=click.IntRange(min=0), help="Pairs per paradigm file (0: all).")
@click.option("--block-size", type=click.IntRange(min=8), help="Tokens per perplexity block (capped at the model's context).  [default: the run's block_size, else 128]")
@click.option("--max-blocks", type=click.IntRange(min=1), help="Held-out blocks scored, spread evenly (default: all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Sentences per forward pass.")
@click.option("--ppl-batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Blocks per forward pass.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", default="auto", show_default=True,
              help="CPU threads for torch, or 'auto' (one thread when the machine is already fully loaded).")
@click.option("--evaluator", "evaluators", multiple=True, type=PluginName("evaluator"),
              help="Evaluator plugin to run (repeatable).  [default: perplexity, minimal_pairs]")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Where to write eval.json (default: inside PATH).")
def command(path, blimp, corpus, limit, block_size, max_blocks, batch_size, ppl_batch_size, device, threads, evaluators,
            json_out) -> None:
    """Perplexity and minimal-pair accuracy of a model folder, or of a run's peers, ensemble and teacher."""
    import torch

    try:
        n_threads = choose_threads(threads)
    except ValueError:
        raise click.BadParameter(f"expected a number or 'auto', got {threads!r}", param_hint="--threads") from None
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    click.echo(f"device {device}; {n_threads} CPU thread(s)", err=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _quiet_transformers()
            result = evaluate(path, blimp=blimp, corpus=corpus, limit=limit, block_size=block_size, max_blocks=max_blocks,
                              batch_size=batch_size, ppl_batch_size=ppl_batch_size, device=device,
                              evaluators=evaluators or DEFAULT_EVALUATORS)
    finally:
        torch.set_num_threads(previous)
    result["settings"]["threads"] = n_threads
    click.echo(format_table(result))
    target = Path(json_out) if json_out else default_json_path(Path(path))
    write_eval_json(target, result)
    n_bad = len(result.get("minimal_pairs", {}).get("malformed", []))
    if n_bad:
        click.echo(f"{n_bad} malformed minimal-pair line(s) skipped (listed in {target})", err=True)
    click.echo(f"wrote {target}", err=True)


def _quiet_transformers() -> None:
    """No weight-loading progress bars on the terminal: ours are the ones that matter."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(command())
