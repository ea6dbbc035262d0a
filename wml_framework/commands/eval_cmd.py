"""``wml eval``: perplexity and minimal-pair accuracy of a model, or of a run's peers, ensemble and teacher
(the work is :func:`wml_framework.evaluation.evaluate`; this module prints and writes it)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from ..cli_types import PluginName
from ..evaluation import DEFAULT_EVALUATORS, choose_threads, default_json_path, evaluate, write_eval_json



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
