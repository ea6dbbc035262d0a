"""``wml eval``: every evaluator plugin on a model, or on a run's peers, ensemble and teacher
(the work is :func:`wml_framework.evaluation.scoring.evaluate`; this module prints and writes it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from .. import config as cfgmod
from ._support import PluginName, host, one_line_errors

__all__ = ["format_table", "command"]


def _params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def format_table(result: dict) -> str:
    """One row per model (the cells each evaluator contributes), then each evaluator's details."""
    from ..evaluation.scoring import DISPLAY

    models = result["models"]
    columns = result.get(DISPLAY, {}).get("columns", {})
    extra: list[str] = []
    for cells in columns.values():
        extra += [c for c in cells if c not in extra]
    head = ["model", "params", "ω", *extra]
    rows = []
    for name, m in models.items():
        label = name + (" ★" if name == result.get("champion") else "")
        omega = "—" if m.get("omega") is None else f"{m['omega']:.3f}"
        rows.append([label, _params(m.get("parameters")), omega, *[columns.get(name, {}).get(c, "—") for c in extra]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(head), "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]
    return "\n".join(lines + result.get(DISPLAY, {}).get("details", []))


@click.command("eval")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--blimp", help="Folder (or file) of minimal-pair .jsonl files; 'default': the sample shipped; 'none': skip.  [default: the run's setting, else 'default']")
@click.option("--corpus", help="Corpus whose held-out split gives perplexity; 'default': the one shipped; 'none': skip.  [default: the run's setting, else 'default']")
@click.option("--limit", type=click.IntRange(min=0), help="Pairs per paradigm file (0: all).")
@click.option("--block-size", type=click.IntRange(min=8), help="Tokens per perplexity block (capped at the model's context).  [default: the run's block_size, else 128]")
@click.option("--set", "overrides", multiple=True, metavar="NAME.OPTION=VALUE",
              help="An evaluator option, e.g. perplexity.max_blocks=8 or minimal_pairs.batch_size=32 (`wml plugins` lists them).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", default="auto", show_default=True,
              help="CPU threads for torch, or 'auto' (one thread when the machine is already fully loaded).")
@click.option("--evaluator", "evaluators", multiple=True, type=PluginName("evaluator"),
              help="Evaluator plugin to run (repeatable).  [default: every registered evaluator]")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Where to write eval.json (default: inside PATH).")
@click.option("--omega", type=click.Choice(["fitted", "trained"]), default="fitted", show_default=True,
              help="A run's ensemble: with ω fitted on the ω half at the end of the run, or with the ω that trained the peers.")
@one_line_errors
def command(path, blimp, corpus, limit, block_size, overrides, device, threads, evaluators, json_out, omega) -> None:
    """Score a model folder, or a run's peers, ensemble and teacher, with every evaluator."""
    import torch

    from ..evaluation.scoring import (
        choose_threads,
        default_json_path,
        evaluate,
        write_eval_json,
    )

    try:
        n_threads = choose_threads(threads)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--threads") from None
    settings = cfgmod.parse_overrides(overrides)
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    click.echo(f"device {device}; {n_threads} CPU thread(s)", err=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _quiet_transformers()
            result = evaluate(path, blimp=blimp, corpus=corpus, limit=limit, block_size=block_size, settings=settings,
                              device=device, evaluators=evaluators or None, host=host(), omega=omega)
    finally:
        torch.set_num_threads(previous)
    result["settings"]["threads"] = n_threads
    click.echo(format_table(result))
    target = Path(json_out) if json_out else default_json_path(Path(path))
    write_eval_json(target, result)
    click.echo(f"wrote {target}", err=True)


def _quiet_transformers() -> None:
    """No weight-loading progress bars on the terminal: ours are the ones that matter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
