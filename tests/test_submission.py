"""Minimal-pair predictions in the BabyLM 2025 pipeline's results layout (``evaluation.submission``),
as ``wml eval`` writes them by default: the keys, ids, chosen sentences and folders, checked here by
hand; against the pipeline's own files and its ``collate_preds.py`` in tests/test_submission_pipeline.py."""

from __future__ import annotations

import json

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

from wml_framework.cli import main
from wml_framework.evaluation.minimal_pairs import read_minimal_pairs
from wml_framework.evaluation.submission import (
    write_zero_shot_predictions,
    zero_shot_dir,
    zero_shot_predictions,
)


def _line(good: str, bad: str, **extra) -> dict:
    return {"sentence_good": good, "sentence_bad": bad, **extra}


@pytest.fixture()
def fast_set(tmp_path):
    """``blimp_fast/`` (BLiMP's lines: field and UID; one file whose UID is not its name, one that
    goes on with another file's UID) and ``supplement_fast/`` (no field; one file with a UID but no field)."""
    write_minimal_pairs(tmp_path / "data" / "blimp_fast", {
        "transitive": [_line(f"g{k}", f"b{k}", field="syntax", UID="transitive") for k in range(3)],
        "transitive_more": [_line("g3", "b3", field="syntax", UID="transitive")],
        "renamed": [_line("gx", "bx", field="morphology", UID="irregular_plural")],
    })
    write_minimal_pairs(tmp_path / "data" / "supplement_fast", {
        "hypernym": [_line("h0", "x0"), _line("h1", "x1")],
        "turn_taking": [_line("t0", "y0", UID="some_uid")],
    })
    return tmp_path / "data"


def test_the_2025_predictions_follow_the_pipelines_keys_ids_and_sentences(fast_set):
    """Catches: the 2024 leading space kept in ``pred``; ids from the file's line instead of the
    key's own count (the pipeline counts a UID on through a second file); a UID used as the key on a line without ``field`` (the pipeline takes the file
    name there) or the file name used where a BLiMP line names its UID; the bad sentence written on a tie;
    every folder's pairs lumped into one dataset."""
    data = read_minimal_pairs(fast_set)
    by_good = {p.good: k for k, p in enumerate(data.pairs)}
    good, bad = np.zeros(len(data.pairs)), np.zeros(len(data.pairs))
    bad[by_good["g1"]] = 1.0          # the bad sentence wins this pair
    good[by_good["h0"]] = -2.0        # and this one; every other pair is an exact tie: the good one is chosen
    out = zero_shot_predictions(data.pairs, good, bad)
    assert out == {
        "blimp_fast": {
            "irregular_plural": {"predictions": [{"id": "irregular_plural_0", "pred": "gx"}]},
            "transitive": {"predictions": [{"id": "transitive_0", "pred": "g0"}, {"id": "transitive_1", "pred": "b1"},
                                           {"id": "transitive_2", "pred": "g2"}, {"id": "transitive_3", "pred": "g3"}]}},
        "supplement_fast": {
            "hypernym": {"predictions": [{"id": "hypernym_0", "pred": "x0"}, {"id": "hypernym_1", "pred": "h1"}]},
            "turn_taking": {"predictions": [{"id": "turn_taking_0", "pred": "t0"}]}},
    }
    assert zero_shot_predictions(data.pairs, good, bad, dataset="blimp_filtered").keys() == {"blimp_filtered"}


def test_files_go_where_the_pipeline_puts_its_own_and_bad_names_write_nothing(fast_set, tmp_path):
    """Catches: another folder order than results/<model>/<revision>/zero_shot/<backend>/blimp/<dataset>;
    a backend the pipeline does not have, or a revision that is a path, accepted."""
    data = read_minimal_pairs(fast_set)
    scores = np.zeros(len(data.pairs))
    written = write_zero_shot_predictions(tmp_path / "results", "tiny", "chck_3M", "mntp", data.pairs, scores, scores)
    root = tmp_path / "results" / "tiny" / "chck_3M" / "zero_shot" / "mntp" / "blimp"
    assert sorted(written) == [root / "blimp_fast" / "predictions.json", root / "supplement_fast" / "predictions.json"]
    assert json.loads(written[0].read_text()) == zero_shot_predictions(data.pairs, scores, scores)[written[0].parent.name]
    assert zero_shot_dir("r", "m", "main", "causal", "blimp_filtered").parts == (
        "r", "m", "main", "zero_shot", "causal", "blimp", "blimp_filtered")
    for backend, revision, needle in (("gpt", "main", "backend must be one of causal, mlm, mntp"),
                                      ("causal", "runs/chck_1M", "revision must be one folder name"),
                                      ("causal", "", "revision must be one folder name")):
        with pytest.raises(ValueError, match=needle):
            write_zero_shot_predictions(tmp_path / "bad", "tiny", revision, backend, data.pairs, scores, scores)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="4 pairs but 3 good"):
        zero_shot_predictions(data.pairs[:4], scores[:3], scores[:4])


def test_wml_eval_writes_the_2025_layout_by_default_and_2024_on_request(tmp_path):
    """Catches: the 2024 file still written by default; the revision option or the scoring (backend)
    not used in the path; choices in the file that disagree with the accuracy ``wml eval`` reports;
    ``babylm_format`` not reaching the evaluator."""
    tok = tiny_tokenizer()
    folder = save_model(tiny_llama(len(tok), seed=3, tokenizer=tok), tok, tmp_path / "tiny-model")
    blimp = write_minimal_pairs(tmp_path / "blimp_fast", {"agreement": [dict(p, field="syntax") for p in
                                                                           synthetic_pairs(12, seed=1, uid="agreement")]})
    results = tmp_path / "results"
    args = ["eval", str(folder), "--blimp", str(blimp), "--corpus", "none", "--evaluator", "minimal_pairs",
            "--json-out", str(tmp_path / "eval.json"), "--set", f"minimal_pairs.predictions_dir={results}"]
    ran = CliRunner().invoke(main, [*args, "--set", "minimal_pairs.revision=chck_2M"])
    assert ran.exit_code == 0, ran.output
    preds = json.loads((results / "tiny-model" / "chck_2M" / "zero_shot" / "causal" / "blimp" / "blimp_fast"
                        / "predictions.json").read_text())["agreement"]["predictions"]
    goods = [p["sentence_good"] for p in synthetic_pairs(12, seed=1)]
    accuracy = json.loads((tmp_path / "eval.json").read_text())["models"]["tiny-model"]["minimal_pairs"]["micro_accuracy"]
    assert [p["id"] for p in preds] == [f"agreement_{k}" for k in range(12)]
    assert np.mean([p["pred"] == g for p, g in zip(preds, goods)]) == pytest.approx(accuracy)
    assert not (results / "tiny-model.json").exists()
    ran = CliRunner().invoke(main, [*args, "--set", "minimal_pairs.babylm_format=2024"])
    assert ran.exit_code == 0, ran.output
    assert set(json.loads((results / "tiny-model.json").read_text())) == {"blimp", "blimp_supplement"}
    ran = CliRunner().invoke(main, [*args, "--set", "minimal_pairs.babylm_format=2023"])
    assert ran.exit_code == 2 and "babylm_format" in ran.output and "2025" in ran.output


def test_a_masked_model_files_its_predictions_under_its_scoring(tmp_path, fast_set):
    """Catches: the evaluator filing every model under ``causal`` instead of the scoring it used
    (``mlm`` for a masked LM, the pipeline backend collate_preds.py must then be given)."""
    from test_pseudo_likelihood import masked_tokenizer, tiny_roberta

    from wml_plugins.evaluators.minimal_pairs import MinimalPairsEvaluator

    tok = masked_tokenizer()
    evaluator = MinimalPairsEvaluator(fast_set / "blimp_fast", predictions_dir=str(tmp_path / "r"), revision="chck_1M")
    result = evaluator(tiny_roberta(tok), tok, name="masked")
    assert result["scoring"] == "mlm"
    assert evaluator.summary()["babylm_predictions"] == [
        str(tmp_path / "r" / "masked" / "chck_1M" / "zero_shot" / "mlm" / "blimp" / "blimp_fast" / "predictions.json")]
