"""Benchmark: the README's main job and its plugin variants, end to end, on this machine.

Runs ``wml run`` as a subprocess for each variant (default: bayes+mirror, l1, uniform, kd) on the
embedded default corpus, and reports wall time, the ensemble's and the best peer's held-out loss,
and how far ω moved from uniform, read back from each run's ``summary.json``. The acceptance
criteria of the run issue: each variant ≤ 10 minutes on a 2-core CPU, the ensemble below every
peer, ω moved away from uniform (for ``mirror``).

    python benchmarks/bench_default_run.py --write-doc docs/performance.md

``--before DIR`` runs the main job once with the checkout in DIR (its own ``.venv``; e.g. a
``git worktree`` of an older commit) and once with this one, one after the other, and reports
wall time, training time, held-out loss and BLiMP-sample accuracy side by side (section
``before_after``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wml_framework.runtime.atomic import replace_doc_section

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "bayes + mirror": ["--init", "bayes", "--updater", "mirror"],
    "l1 + mirror": ["--init", "l1", "--updater", "mirror"],
    "bayes + uniform": ["--init", "bayes", "--updater", "uniform"],
    "bayes + mirror + kd loss": ["--init", "bayes", "--updater", "mirror", "--loss", "kd"],
}
QUICK = ["--set", "teacher_steps=20", "--set", "max_steps=6", "--set", "lr_decay_iters=6", "--set", "warmup_iters=1",
         "--set", "eval_interval=3", "--set", "blimp_limit=3", "--set", "teacher_n_embd=32", "--set", "teacher_n_layer=2",
         "--set", "vocab_size=512", "--set", "bayesian_n_iter=5", "--set", "bayesian_init_points=3", "--set", "outer_every=2", "--set", "perplexity.max_blocks=8"]


def run_variant(args: list[str], out: Path, extra: list[str], checkout: Path | None = None) -> dict:
    """One ``wml run`` subprocess (of ``checkout``'s code and venv when given) and what it reported."""
    python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
    start = time.perf_counter()
    proc = subprocess.run([python, "-m", "wml_framework.cli", "run", *args, *extra, "--out", str(out)],
                          capture_output=True, text=True, cwd=checkout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"wml run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    best = min(p["val_loss"] for p in s["peers"])
    return {"seconds": seconds, "ensemble": s["ensemble_val_loss"], "best_peer": best,
            "teacher": s["teacher"]["val_loss"], "omega": s["omega"], "training_s": s.get("elapsed_s"),
            "omega_moved": max(abs(w - 1 / len(s["omega"])) for w in s["omega"]), "steps": s["steps"],
            "blimp": ensemble_blimp(out), "peers": [p.get("shape", "?") for p in s["peers"]]}


def ensemble_blimp(run: Path) -> float | None:
    """The ensemble's macro accuracy on the minimal pairs, from the run's ``eval.json``."""
    path = run / "eval.json"
    if not path.exists():
        return None
    for entry in json.loads(path.read_text()).get("models", {}).values():
        if entry.get("role") == "ensemble":
            for result in entry.values():
                if isinstance(result, dict) and result.get("macro_accuracy") is not None:
                    return result["macro_accuracy"]
    return None


def table(rows: dict[str, dict], command: str) -> str:
    lines = [
        "## The main job, end to end (`benchmarks/bench_default_run.py`)",
        "",
        f"Command: `{command}` on {os.cpu_count()} CPU cores (x86_64, torch CPU), the embedded default corpus and "
        "default configuration; each variant is one `wml run` subprocess (tokenizer cached after the first). "
        "Held-out losses are on the evaluation half of the held-out split (the half ω never sees).",
        "",
        "| variant | wall time | teacher | best peer | ensemble | ensemble below every peer | ω | max \\|ω−1/M\\| |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for name, r in rows.items():
        omega = "[" + ", ".join(f"{w:.3f}" for w in r["omega"]) + "]"
        lines.append(f"| {name} | {r['seconds']:.0f} s | {r['teacher']:.4f} | {r['best_peer']:.4f} | {r['ensemble']:.4f} | "
                     f"{'yes' if r['ensemble'] < r['best_peer'] else 'no'} | {omega} | {r['omega_moved']:.3f} |")
    lines += ["", "One seed, one machine: differences between variants of a few hundredths are within run-to-run "
              "noise and say nothing about which method is better (that is `wml compare`'s job)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    ap.add_argument("--quick", action="store_true", help="tiny settings (seconds): proves the script works")
    ap.add_argument("--write-doc", type=Path, help="replace this script's section of a markdown file")
    ap.add_argument("--before", type=Path, help="another checkout (with its .venv): run the main job with it and "
                    "with this one, one after the other, and compare")
    ap.add_argument("--keep", type=Path, help="keep the run folders here")
    args = ap.parse_args(argv)
    if args.before:
        return before_after(args)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows[name] = run_variant(VARIANTS[name], Path(tmp) / f"run{len(rows)}", QUICK if args.quick else [])
            r = rows[name]
            print(f"{name:<26} {r['seconds']:7.1f} s  ensemble {r['ensemble']:.4f}  best peer {r['best_peer']:.4f}  "
                  f"ω moved {r['omega_moved']:.3f}", flush=True)
    command = "python benchmarks/bench_default_run.py" + (" --quick" if args.quick else "")
    if args.write_doc:
        replace_doc_section(args.write_doc, "default_run", table(rows, command))
    return 0


def before_after(args) -> int:
    """The default job (bayes + mirror) with another checkout's code, then with this one."""
    import shutil

    extra = QUICK if args.quick else []
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, checkout in (("before", args.before.resolve()), ("after", None)):
            out = Path(tmp) / label
            rows[label] = r = run_variant(VARIANTS["bayes + mirror"], out, extra, checkout)
            rows[label]["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                   text=True, cwd=checkout or ROOT).stdout.strip()
            print(f"{label:<7} {r['seconds']:7.1f} s (training {r['training_s']} s)  ensemble {r['ensemble']:.4f}  "
                  f"BLiMP {r['blimp']}  peers {r['peers']}", flush=True)
            if args.keep:
                shutil.copytree(out, args.keep / label, dirs_exist_ok=True)
    if args.write_doc:
        lines = ["## The default run, before and after the speed work (`benchmarks/bench_default_run.py --before`)", "",
                 f"Command: `git worktree add /tmp/before {rows['before']['commit']}` (with its own `.venv`), then "
                 f"`python benchmarks/bench_default_run.py --before /tmp/before{' --quick' if args.quick else ''}`; "
                 f"{os.cpu_count()} CPU cores, the two runs one after the other. `wml run --init bayes --updater mirror` "
                 "with the default configuration; BLiMP is the ensemble's macro accuracy on the shipped sample.", "",
                 "| code | wall time | training | teacher | best peer | ensemble | BLiMP sample | peers |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for label, r in rows.items():
            blimp = "–" if r["blimp"] is None else f"{r['blimp']:.3f}"
            lines.append(f"| {label} ({r['commit']}) | {r['seconds']:.0f} s | {r['training_s']:.0f} s | {r['teacher']:.4f} | "
                         f"{r['best_peer']:.4f} | {r['ensemble']:.4f} | {blimp} | {', '.join(r['peers'])} |")
        replace_doc_section(args.write_doc, "before_after", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
