"""A BabyLM 2025 entry checked end to end: the BabyLM pipeline's own fast zero-shot code evaluates
every word milestone a `wml run --set babylm_track=…` gathered (``RUN/babylm/chck_<k>M/<name>/``),
and `wml eval` scores the same folders into the 2025 submission layout; the two must write the same
predictions and accuracies.

    python benchmarks/babylm_entry.py --run runs/entry --blimp ../shared/data/blimp-dev \
        --pipeline ../shared/third_party/babylm-evaluation-pipeline-2025 [--python PIPELINE_VENV/bin/python]

The fast BLiMP set is made from ``--blimp`` (the first ``--pairs`` pairs of each paradigm, in the
pipeline's data layout, ``…/fast_eval/blimp_fast/<paradigm>.jsonl``). ``--python`` is the interpreter
the pipeline runs under (its own venv, with its pinned transformers 4.51.3, as a participant runs
it; default: this one). Prints one row per revision.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: runs the pipeline's sentence_zero_shot as `python -m` would; modules its image tasks import but
#: BLiMP never uses get a stand-in when the interpreter lacks them
DRIVER = textwrap.dedent("""
    import importlib.machinery, runpy, sys, types
    import transformers                       # first: it looks for datasets as it is installed
    for name in ("datasets", "aiohttp"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            stub.load_dataset = stub.ClientTimeout = None
            sys.modules[name] = stub
    sys.argv = ["run", *sys.argv[1:]]
    runpy.run_module("evaluation_pipeline.sentence_zero_shot.run", run_name="__main__")
""")


def fast_blimp(source: Path, dest: Path, pairs: int) -> Path:
    """The first ``pairs`` pairs of every paradigm of ``source``, as ``dest/blimp_fast/*.jsonl``."""
    out = dest / "blimp_fast"
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.glob("*.jsonl")):
        lines = f.read_text(encoding="utf-8").splitlines()[:pairs]
        (out / f.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def run_pipeline(python: str, pipeline: Path, model: Path, revision: str, backend: str, data: Path, work: Path):
    env = {**os.environ, "PYTHONPATH": str(pipeline), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([python, "-c", DRIVER, "--model_path_or_name", str(model), "--backend", backend,
                           "--task", "blimp", "--data_path", str(data), "--save_predictions",
                           "--revision_name", revision], cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the pipeline failed on {model} ({revision}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def pipeline_accuracy(report: str) -> float:
    lines = report.splitlines()
    return float(lines[lines.index("### AVERAGE ACCURACY") + 1])


def wml_eval(model: Path, revision: str, data: Path, results: Path) -> dict:
    out = results / f"{revision}-eval.json"
    cmd = [sys.executable, "-m", "wml_framework.cli", "eval", str(model), "--corpus", "none",
           "--evaluator", "minimal_pairs", "--blimp", str(data), "--json-out", str(out), "--threads", "1",
           "--set", f"minimal_pairs.predictions_dir={results}", "--set", f"minimal_pairs.revision={revision}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"wml eval failed on {model}:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--blimp", type=Path, required=True, help="folder of BLiMP-format .jsonl paradigms")
    ap.add_argument("--pipeline", type=Path, required=True)
    ap.add_argument("--python", default=sys.executable, help="the interpreter of the pipeline's venv")
    ap.add_argument("--pairs", type=int, default=200, help="pairs a paradigm in the fast set (the pipeline's: 200)")
    ap.add_argument("--work", type=Path, default=None, help="where data and results go (default: RUN/babylm-check)")
    args = ap.parse_args()
    gathered = json.loads((args.run / "babylm" / "milestones.json").read_text())
    name, backend = gathered["model_name"], gathered["backend"]
    work = (args.work or args.run / "babylm-check").resolve()
    data = fast_blimp(args.blimp, work / "evaluation_data" / "fast_eval", args.pairs)
    rows = []
    for revision in gathered["revisions"]:
        rev = revision["name"]
        model = (args.run / "babylm" / rev / name).resolve()
        report = run_pipeline(args.python, args.pipeline.resolve(), model, rev, backend, data, work)
        ours = wml_eval(model, rev, data, work / "wml-results")
        theirs_file = work / "results" / name / rev / "zero_shot" / backend / "blimp" / "blimp_fast" / "predictions.json"
        mine_file = work / "wml-results" / name / rev / "zero_shot" / backend / "blimp" / "blimp_fast" / "predictions.json"
        same = json.loads(theirs_file.read_text()) == json.loads(mine_file.read_text())
        mp = ours["models"][name]["minimal_pairs"]
        rows.append((rev, revision["words"], pipeline_accuracy(report), 100 * mp["macro_accuracy"], same))
    print("| revision | words trained on | pipeline BLiMP fast (avg over UIDs) | wml eval (macro) | same predictions.json |")
    print("|---|---:|---:|---:|---|")
    for rev, words, theirs, mine, same in rows:
        print(f"| {rev} | {words:,} | {theirs:.2f} | {mine:.2f} | {'yes' if same else 'NO'} |")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
