"""The end of ``wml run``: score every peer, the ensemble and the teacher, then write the report.

Runs after the peers are on disk, so a failure here loses no training; ``wml eval`` and
``wml report`` redo either step by hand.
"""

from __future__ import annotations

from pathlib import Path

from .config import WMLConfig


def finish_run(run_dir: Path, cfg: WMLConfig, log=print) -> None:
    from .evaluation import evaluate, write_eval_json
    from .report import write_report

    skip = cfg.blimp.strip().lower() in ("", "none")
    result = evaluate(run_dir, blimp="none" if skip else cfg.blimp, limit=cfg.blimp_limit or None,
                      device=cfg.device, progress=False, log=log)
    write_eval_json(run_dir / "eval.json", result)
    for name, entry in result["models"].items():
        parts = []
        if "perplexity" in entry:
            parts.append(f"perplexity {entry['perplexity']['ppl']:.2f}")
        if "minimal_pairs" in entry:
            parts.append(f"minimal pairs {100 * entry['minimal_pairs']['macro_accuracy']:.1f}%")
        log(f"  {name:<10} {'  '.join(parts)}")
    report = write_report(run_dir)
    log(f"report: {report.path}")
