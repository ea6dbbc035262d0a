"""wml's ``mlm`` and ``mntp`` minimal-pair scores against the BabyLM 2025 evaluation pipeline's backends
of those names, run as an outside client on the same tiny model folder and the same pairs.

The pipeline (``/work/shared/third_party/babylm-evaluation-pipeline-2025``, or ``$BABYLM_PIPELINE_2025``)
runs in a subprocess through its own entry point (``sentence_zero_shot.run.main``) on a BLiMP-format
folder; its per-sentence log-probabilities are taken where its ``compute_mlm_results`` hands them to
``rank_and_evaluate``, and its accuracy from its own report. Two things are supplied around it, neither
touching a number: ``datasets`` and ``aiohttp`` are imported by its ``read_files.py`` only to load image
sets, so stand-ins are given when they are not installed; it pins transformers 4.51.3, and runs as it is
on the transformers installed here.

Would catch: any difference in which tokens are scored (special tokens, the first token of mntp), where
the prediction is read, the masking, the padding, or how a pair is chosen; mntp scored as mlm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_pseudo_likelihood import masked_tokenizer, tiny_roberta

from wml_framework.evaluation.minimal_pairs import score_minimal_pairs

PIPELINE = Path(os.environ.get("BABYLM_PIPELINE_2025", "/work/shared/third_party/babylm-evaluation-pipeline-2025"))

pytestmark = pytest.mark.skipif(not (PIPELINE / "evaluation_pipeline" / "sentence_zero_shot" / "run.py").is_file(),
                                reason=f"the BabyLM 2025 evaluation pipeline is not at {PIPELINE}")

PAIRS = {
    "anaphor_gender_agreement": [("The girl saw herself.", "The girl saw himself."),
                                 ("Many boys hurt themselves.", "Many boys hurt herself."),
                                 ("The teacher likes herself.", "The teacher likes itself.")],
    "wh_questions": [("Who did the boy see?", "Who did the boy see the cat?"),
                     ("What are these books about?", "What are these books about the park?"),
                     ("Who ran to the park?", "Who the dog ran to the park?")],
}

#: runs the pipeline's entry point once per (model, backend) and prints what it scored, as JSON
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, types
    pipeline, jobs = sys.argv[1], json.loads(sys.argv[2])
    sys.path.insert(0, pipeline)
    for name in ("datasets", "aiohttp"):   # imported by read_files.py for image sets only
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.load_dataset = stub.ClientTimeout = None
            sys.modules[name] = stub
    from evaluation_pipeline.sentence_zero_shot import compute_results, run
    scores, rank = {}, compute_results.rank_and_evaluate
    def spy(args, stats, all_log_probs, raw, *rest):
        for i, item in enumerate(raw):
            for k, sentence in enumerate(item["sentences"]):
                scores[sentence] = float(all_log_probs[1.0][k][i])
        return rank(args, stats, all_log_probs, raw, *rest)
    compute_results.rank_and_evaluate = spy
    out = []
    for job in jobs:
        scores = {}
        sys.argv = ["run", "--data_path", job["data"], "--task", "blimp", "--model_path_or_name", job["model"],
                    "--backend", job["backend"], "--output_dir", job["out"], "--batch_size", "2",
                    "--non_causal_batch_size", "5", "--save_predictions"]
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            run.main()
        out.append({"scores": scores, "report": printed.getvalue()})
    print("RESULT" + json.dumps(out))
""")


def write_pairs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for uid, pairs in PAIRS.items():
        (folder / f"{uid}.jsonl").write_text("".join(
            json.dumps({"sentence_good": g, "sentence_bad": b, "field": "syntax", "UID": uid,
                        "linguistics_term": uid}) + "\n" for g, b in pairs), encoding="utf-8")


def run_pipeline(jobs: list[dict]) -> list[dict]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(PIPELINE), json.dumps(jobs)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def pipeline_average(report: str) -> float:
    lines = report.splitlines()
    return float(lines[lines.index("### AVERAGE ACCURACY") + 1])


@pytest.mark.slow
def test_mlm_and_mntp_agree_with_the_babylm_2025_pipeline(tmp_path):
    data = tmp_path / "blimp"
    write_pairs(data)
    folders = {}
    for name, special in (("roberta", True), ("bare", False)):   # bare: no cls/bos, mntp skips the first token
        tok = masked_tokenizer(special=special)
        model = tiny_roberta(tok, seed=4)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        folders[name] = (model, tok)
    jobs = [{"data": str(data), "model": str(tmp_path / name), "backend": backend, "out": str(tmp_path / "out")}
            for name in folders for backend in ("mlm", "mntp")]
    results = run_pipeline(jobs)
    worst = 0.0
    for job, theirs in zip(jobs, results):
        model, tok = folders[Path(job["model"]).name]
        ours = score_minimal_pairs(model, tok, data, scoring=job["backend"], return_logprobs=True)
        sentences = [s for pairs in PAIRS.values() for pair in pairs for s in pair]
        mine = dict(zip([p.good for p in _pairs(data)] + [p.bad for p in _pairs(data)],
                        ours["logprob_good"] + ours["logprob_bad"]))
        assert set(theirs["scores"]) == set(sentences)
        diff = max(abs(mine[s] - theirs["scores"][s]) for s in sentences)
        worst = max(worst, diff)
        assert diff < 1e-4, (job, diff)
        # the same choices, hence the same accuracy: the pipeline's macro average over UIDs, in percent
        assert pipeline_average(theirs["report"]) == pytest.approx(100 * ours["macro_accuracy"], abs=0.01)
        chosen = json.loads((tmp_path / "out" / job["model"].split("/")[-1] / "main" / "zero_shot" / job["backend"]
                             / "blimp" / "blimp" / "predictions.json").read_text())
        theirs_good = [p["pred"] == g for uid, pairs in PAIRS.items()
                       for p, (g, _) in zip(chosen[uid]["predictions"], pairs)]
        good = np.array(ours["logprob_good"]) >= np.array(ours["logprob_bad"])
        assert theirs_good == good.tolist()
    # mntp is not mlm: the two backends give different numbers on the same model
    assert results[0]["scores"] != results[1]["scores"]
    print(f"max |wml - pipeline| per sentence: {worst:.2e}")


def _pairs(data: Path):
    from wml_framework.evaluation.minimal_pairs import read_minimal_pairs

    return read_minimal_pairs(data).pairs
