"""``wml eval``'s BabyLM 2025 predictions against the 2025 pipeline itself, run as an outside client
(``/work/shared/third_party/babylm-evaluation-pipeline-2025``, or ``$BABYLM_PIPELINE_2025``):

* its ``sentence_zero_shot`` (causal backend) on the same model folder and data folders writes the
  same ``predictions.json`` files, key for key, id for id, sentence for sentence;
* its ``collate_preds.py --fast --track strict-small`` takes files written by ``wml eval`` for the final
  model (``main``: ``blimp_filtered``, ``supplement_filtered``) and for every checkpoint it requires
  (``chck_1M`` … ``chck_100M``, two models taking turns), puts our final predictions in its submission
  and scores each checkpoint's exactly as ``wml eval`` did; and it refuses a submission with one
  checkpoint missing.

Collation also insists on every task wml does not evaluate (EWoK, entity tracking, WUG, COMPS, reading,
age of acquisition, GLUE fine-tuning): for those, stand-in files of the sizes it checks are written
here (random predictions on random stand-in data), so that it runs through; their numbers mean
nothing and nothing is asserted about them. The sizes come from ``collate_preds.py`` itself. It imports
``statsmodels`` (for the reading task): when the interpreter lacks it, it is installed for the
subprocess only (``pip install --target``, with ``patsy``), and the tests skip when that fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from eval_synthetic import (
    save_model,
    synthetic_pairs,
    tiny_llama,
    tiny_tokenizer,
    write_minimal_pairs,
)
from test_babylm_pipeline_masked import PIPELINE, run_pipeline

from wml_framework.cli import main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (PIPELINE / "evaluation_pipeline" / "collate_preds.py").is_file(),
                                 reason=f"the BabyLM 2025 evaluation pipeline is not at {PIPELINE}")]

MODEL = "tiny-wml"   # the folder name: the pipeline files a local model's results under it

SIZES = textwrap.dedent("""
    import json
    from evaluation_pipeline import collate_preds as c
    print(json.dumps({"revisions": c.STRICT_SMALL_FAST_REVISIONS, "fast": c.FAST_SIZES, "full": c.FULL_SIZES,
                      "aoa": c.AOA_SIZE}))
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny LLaMA folders named alike (as a model's checkpoints are), different weights."""
    root = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    return [save_model(tiny_llama(len(tok), seed=seed, tokenizer=tok), tok, root / name / MODEL)
            for seed, name in ((11, "a"), (12, "b"))]


@pytest.fixture(scope="module")
def collate_env(tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": str(PIPELINE), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if importlib.util.find_spec("statsmodels") is None:
        target = tmp_path_factory.mktemp("statsmodels")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                               "statsmodels", "patsy"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"collate_preds.py imports statsmodels, which is not installed and pip could not install: "
                        f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        env["PYTHONPATH"] += os.pathsep + str(target)
    return env


def blimp_lines(n: int, seed: int, uid: str | None) -> list[dict]:
    """BLiMP's lines carry ``field`` and ``UID``; the supplement's (uid None) neither."""
    rows = synthetic_pairs(n, seed=seed, uid=uid)
    return [dict(r, field="syntax", linguistics_term="agreement") if uid else r for r in rows]


def wml_eval(model: Path, blimp: Path, results: Path, revision: str, json_out: Path) -> dict:
    ran = CliRunner().invoke(main, ["eval", str(model), "--blimp", str(blimp), "--corpus", "none",
                                    "--evaluator", "minimal_pairs", "--json-out", str(json_out),
                                    "--set", f"minimal_pairs.predictions_dir={results}",
                                    "--set", f"minimal_pairs.revision={revision}"])
    assert ran.exit_code == 0, ran.output
    return json.loads(json_out.read_text())["models"][MODEL]["minimal_pairs"]


def test_the_pipeline_writes_the_same_predictions_files(tmp_path, models):
    """Catches any difference from the pipeline's own files: keys (UID or file name), id numbering,
    the sentence written (stripped, or with the 2024 leading space), folder names."""
    data = tmp_path / "data"
    write_minimal_pairs(data / "blimp_fast", {"anaphor_number_agreement": blimp_lines(6, 1, "anaphor_number_agreement"),
                                              "odd_name": blimp_lines(4, 2, "transitive")})
    write_minimal_pairs(data / "supplement_fast", {"hypernym": [dict(r, UID="not_the_key") for r in blimp_lines(5, 3, None)]})
    jobs = [{"data": str(data / name), "model": str(models[0]), "backend": "causal", "out": str(tmp_path / "theirs")}
            for name in ("blimp_fast", "supplement_fast")]
    run_pipeline(jobs)
    ours = tmp_path / "ours"
    wml_eval(models[0], data, ours, "main", tmp_path / "eval.json")
    for name in ("blimp_fast", "supplement_fast"):
        part = Path(MODEL, "main", "zero_shot", "causal", "blimp", name, "predictions.json")
        theirs = json.loads((tmp_path / "theirs" / part).read_text())
        assert json.loads((ours / part).read_text()) == theirs
    assert set(theirs) == {"hypernym"} and "transitive" in json.loads((ours / part.parent.parent / "blimp_fast"
                                                                           / "predictions.json").read_text())


def stand_ins(results: Path, fast_data: Path, sizes: dict, rng: np.random.Generator) -> None:
    """Files for every task wml does not evaluate, of the sizes collate_preds.py checks (see the module
    docstring): predictions under each revision, and the data its fast scoring reads."""
    def preds(n, **fields):
        return {"predictions": [{"id": str(i), "pred": 0, **{k: f(i) for k, f in fields.items()}} for i in range(n)]}

    def dump(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def smallest(task):
        return min(sizes["full"][task].items(), key=lambda kv: kv[1])

    def revision(name, fast):
        zero = results / MODEL / name / "zero_shot" / "causal"
        ewok = smallest("ewok")[0]
        dump(zero / "ewok" / ("ewok_fast" if fast else "ewok_filtered") / "predictions.json",
             {ewok: preds(sizes["fast"]["ewok"] if fast else sizes["full"]["ewok"][ewok], pred=lambda i: "a")})
        et = smallest("entity_tracking") if not fast else min(sizes["fast"]["entity_tracking"].items(), key=lambda kv: kv[1])
        dump(zero / "entity_tracking" / ("entity_tracking_fast" if fast else "entity_tracking") / "predictions.json",
             {et[0]: preds(et[1], pred=lambda i: "a")})
        for task, folder in (("wug_adj", "wug_adj_nominalization"), ("wug_past", "wug_past_tense")):
            n = sizes["fast" if fast else "full"][task]
            dump(zero / task / folder / "predictions.json", {folder: preds(n, pred=lambda i: "a", prob=lambda i: float(rng.random()))})
        dump(zero / "reading" / "predictions.json", {"reading": preds(sizes["full"]["reading"], pred=lambda i: float(rng.random()),
                                                                      prev_pred=lambda i: float(rng.random()))})
        if not fast:
            comps = smallest("comps")
            dump(zero / "comps" / "comps" / "predictions.json", {comps[0]: preds(comps[1])})
            dump(zero / "AoA_word" / "surprisal.json", {"results": [{"step": r, "surprisal": 0.0} for r in sizes["revisions"]
                                                                    for _ in range(sizes["aoa"])]})
            for task in ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc"):
                dump(results / MODEL / name / "finetune" / task / "predictions.json", {task: preds(sizes["full"][task])})

    revision("main", fast=False)
    for name in sizes["revisions"]:
        revision(name, fast=True)
    ewok = smallest("ewok")[0]
    lines = lambda n, row: "".join(json.dumps(row(i)) + "\n" for i in range(n))   # noqa: E731
    (fast_data / "ewok_fast").mkdir()
    (fast_data / "ewok_fast" / f"{ewok}.jsonl").write_text(lines(sizes["fast"]["ewok"], lambda i: {"Target1": "a"}))
    et, n = min(sizes["fast"]["entity_tracking"].items(), key=lambda kv: kv[1])
    (fast_data / "entity_tracking_fast").mkdir()
    (fast_data / "entity_tracking_fast" / "regular.jsonl").write_text(
        lines(n, lambda i: {"numops": int(et.split("_")[1]), "options": ["a", "b"]}))
    for task, folder in (("wug_adj", "wug_adj_nominalization"), ("wug_past", "wug_past_tense")):
        (fast_data / folder).mkdir()
        (fast_data / folder / f"{folder}.jsonl").write_text(
            lines(sizes["fast"][task], lambda i: {"ratio": float(rng.random()), "sentences": ["a", "b"]}))
    (fast_data / "reading").mkdir()
    rows = sizes["full"]["reading"]
    columns = ["RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound", "self_paced_reading_time", "Subtlex_log10",
               "length", "context_length", "prev_length"]
    table = np.round(rng.random((rows, len(columns))), 4)
    (fast_data / "reading" / "reading_data.csv").write_text(
        "item," + ",".join(columns) + "\n" + "".join(f"{i}," + ",".join(map(str, r)) + "\n" for i, r in enumerate(table)))


def test_collate_preds_takes_wml_eval_files_for_the_final_model_and_every_checkpoint(tmp_path, models, collate_env):
    """Catches: any path, key, id, size or sentence that collate_preds.py rejects or misreads; a revision
    option that does not reach the path (every checkpoint would read one model's choices); predictions
    that do not reproduce wml's accuracy when the pipeline scores them against sentence_good."""
    proc = subprocess.run([sys.executable, "-c", SIZES], capture_output=True, text=True, env=collate_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = json.loads(proc.stdout.strip().splitlines()[-1])
    blimp_fast, supplement_fast = sizes["fast"]["blimp"], sizes["fast"]["blimp_supplement"]
    final_uid, final_n = min(sizes["full"]["blimp"].items(), key=lambda kv: kv[1])
    supp_uid, supp_n = min(sizes["full"]["blimp_supplement"].items(), key=lambda kv: kv[1])
    fast_uids = sorted(sizes["full"]["blimp"])[:2]

    data, results = tmp_path / "data", tmp_path / "results"
    write_minimal_pairs(data / "fast" / "blimp_fast", {u: blimp_lines(blimp_fast, k, u) for k, u in enumerate(fast_uids)})
    write_minimal_pairs(data / "fast" / "supplement_fast", {supp_uid: blimp_lines(supplement_fast, 7, None)})
    write_minimal_pairs(data / "final" / "blimp_filtered", {final_uid: blimp_lines(final_n, 8, final_uid)})
    write_minimal_pairs(data / "final" / "supplement_filtered", {supp_uid: blimp_lines(supp_n, 9, None)})

    final = wml_eval(models[1], data / "final", results, "main", tmp_path / "main.json")
    accuracy = {}
    for k, revision in enumerate(sizes["revisions"]):     # the two models take turns
        scored = wml_eval(models[k % 2], data / "fast", results, revision, tmp_path / f"{revision}.json")
        accuracy[revision] = {name: v["accuracy"] for name, v in scored["files"].items()}
    assert accuracy[sizes["revisions"][0]] != accuracy[sizes["revisions"][1]]   # else the turns prove nothing

    fast_data = tmp_path / "fast_eval"
    shutil.copytree(data / "fast", fast_data)
    stand_ins(results, fast_data, sizes, np.random.default_rng(0))
    collate = [sys.executable, "-m", "evaluation_pipeline.collate_preds", "--model_path_or_name", MODEL,
               "--backend", "causal", "--fast", "--track", "strict-small", "--results_dir", str(results),
               "--fast_eval_dir", str(fast_data)]
    proc = subprocess.run(collate, capture_output=True, text=True, env=collate_env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    submission = json.loads((results / MODEL / "all_full_preds_and_fast_scores_causal.json").read_text())

    written = results / MODEL / "main" / "zero_shot" / "causal" / "blimp"
    assert submission["blimp"] == json.loads((written / "blimp_filtered" / "predictions.json").read_text())
    assert submission["blimp_supplement"] == json.loads((written / "supplement_filtered" / "predictions.json").read_text())
    assert len(submission["blimp"][final_uid]["predictions"]) == final_n and final["pairs"] == final_n + supp_n
    fast = submission["fast_eval_results"]
    for k, revision in enumerate(sizes["revisions"]):
        assert fast["blimp"][k] == pytest.approx({u: accuracy[revision][u] for u in fast_uids}), revision
        assert fast["blimp_supplement"][k] == pytest.approx({supp_uid: accuracy[revision][supp_uid]}), revision

    # one checkpoint missing: no submission
    missing = sizes["revisions"][-1]
    (results / MODEL / missing / "zero_shot" / "causal" / "blimp" / "blimp_fast" / "predictions.json").unlink()
    proc = subprocess.run(collate, capture_output=True, text=True, env=collate_env, cwd=tmp_path, timeout=600)
    assert proc.returncode != 0 and f"revision {missing} is incorrect" in proc.stderr
    assert "The blimp data is missing!" in proc.stdout
