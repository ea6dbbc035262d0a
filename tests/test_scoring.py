"""Scoring checked against independent computations: a per-sentence loop with no batching
and no padding, logits mixed by hand for the ensemble, cross-entropy per block for
perplexity, and the BabyLM pipeline's own way of scoring a saved model folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from eval_synthetic import (
    save_model,
    synthetic_sentences,
    tiny_gpt2,
    tiny_llama,
    tiny_tokenizer,
    write_synthetic_run,
)

from wml_framework.evaluation import heldout, minimal_pairs, run_reader
from wml_framework.evaluation import models as wml_models
from wml_framework.runtime.run_layout import RunLayout
from wml_framework.text import tokenizer
from wml_framework.text.corpus import default_blimp_dir

TOL = 1e-4


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(vocab_size=300)


@pytest.fixture(scope="module")
def llama(tok):
    return tiny_llama(len(tok), hidden=32, layers=2, heads=4, seed=1, tokenizer=tok)


@pytest.fixture(scope="module")
def sentences():
    """Mixed lengths (one word … a long sentence), so batches really are padded."""
    return ["A", "The wolf.", *synthetic_sentences(9, seed=5),
            "Alice sees the garden and the river and the old house and a golden key in the forest."]


def loop_logprob(models_and_weights, ids: list[int]) -> float:
    """log P of one sequence, alone (no batch, no padding, no mask): Σ_t log softmax(Σ ω z)[x_t]."""
    x = torch.tensor([ids])
    with torch.no_grad():
        z = sum(w * m(input_ids=x).logits[0].double() for m, w in models_and_weights)
    logp = torch.log_softmax(z, dim=-1)
    return float(sum(logp[t - 1, ids[t]] for t in range(1, len(ids))))


def bos_ids(tok, texts):
    """The documented presentation: BOS, then the sentence with a leading space (tokenizer.present)."""
    return [[tok.bos_token_id, *tok(" " + t, add_special_tokens=False)["input_ids"]] for t in texts]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_sentence_logprobs_match_plain_loop(tok, sentences, family):
    model = (tiny_llama if family == "llama" else tiny_gpt2)(len(tok), seed=2, tokenizer=tok)
    batched = minimal_pairs.sentence_logprobs(model, tok, sentences, batch_size=4)
    expected = [loop_logprob([(model, 1.0)], ids) for ids in bos_ids(tok, sentences)]
    assert batched.dtype == np.float64
    np.testing.assert_allclose(batched, expected, atol=TOL, rtol=0)
    # one big batch and batches of one agree as well: the order is restored after sorting
    np.testing.assert_allclose(minimal_pairs.sentence_logprobs(model, tok, sentences, batch_size=64), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(minimal_pairs.sentence_logprobs(model, tok, sentences, batch_size=1), expected, atol=TOL, rtol=0)


def test_minimal_pair_logprobs_match_plain_loop(tok, llama):
    data = minimal_pairs.read_minimal_pairs(default_blimp_dir(), limit=4)
    result = minimal_pairs.score_minimal_pairs(llama, tok, data, batch_size=5, return_logprobs=True)
    good = [loop_logprob([(llama, 1.0)], ids) for ids in bos_ids(tok, [p.good for p in data.pairs])]
    bad = [loop_logprob([(llama, 1.0)], ids) for ids in bos_ids(tok, [p.bad for p in data.pairs])]
    np.testing.assert_allclose(result["logprob_good"], good, atol=TOL, rtol=0)
    np.testing.assert_allclose(result["logprob_bad"], bad, atol=TOL, rtol=0)
    assert result["pairs"] == 8 * 4 == len(data.pairs)
    assert result["correct"] == int(np.sum(np.array(good) > np.array(bad)))


def test_ensemble_logprobs_match_manually_mixed_logits(tok, sentences):
    models = [tiny_llama(len(tok), hidden=h, seed=10 + h, tokenizer=tok) for h in (24, 32, 48)]
    omega = [0.5, 0.3, 0.2]
    ens = wml_models.EnsembleLM(models, omega)
    got = minimal_pairs.sentence_logprobs(ens, tok, sentences, batch_size=3)
    expected = [loop_logprob(list(zip(models, omega)), ids) for ids in bos_ids(tok, sentences)]
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    # the ensemble is not the mixture of the peers' scores: logits are mixed before the softmax
    mixed_scores = sum(w * minimal_pairs.sentence_logprobs(m, tok, sentences) for m, w in zip(models, omega))
    assert np.abs(mixed_scores - got).max() > 1e-3


def test_ensemble_weights(tok, sentences):
    models = [tiny_llama(len(tok), seed=s, tokenizer=tok) for s in (3, 4)]
    one_hot = wml_models.EnsembleLM(models, [0.0, 2.0])  # normalised to [0, 1]
    assert one_hot.omega.tolist() == [0.0, 1.0]
    np.testing.assert_allclose(minimal_pairs.sentence_logprobs(one_hot, tok, sentences),
                               minimal_pairs.sentence_logprobs(models[1], tok, sentences), atol=1e-5, rtol=0)
    assert wml_models.count_parameters(one_hot) == sum(wml_models.count_parameters(m) for m in models)
    for bad in ([0.5], [-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError):
            wml_models.EnsembleLM(models, bad)
    other_vocab = tiny_llama(len(tok) + 8, seed=5)
    with pytest.raises(ValueError, match="vocabulary"):
        minimal_pairs.sentence_logprobs(wml_models.EnsembleLM([models[0], other_vocab], [0.5, 0.5]), tok, sentences)


def test_bos_is_prepended_for_gpt2_style_tokenizers(tok, llama):
    """A tokenizer that adds no BOS (GPT-2 style) gets its eos token prepended, so the first word is scored."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    gpt2_style = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|eos|>", pad_token="<|pad|>")
    text = "Alice sees the garden."
    plain = gpt2_style(" " + text)["input_ids"]
    assert plain[0] != gpt2_style.eos_token_id
    got = minimal_pairs.sentence_logprobs(llama, gpt2_style, [text])[0]
    assert got == pytest.approx(loop_logprob([(llama, 1.0)], [gpt2_style.eos_token_id, *plain]), abs=TOL)
    # the first word counts: scoring without the prepended token gives a different number
    assert abs(got - loop_logprob([(llama, 1.0)], plain)) > 1e-3


def test_scoring_restores_training_mode_and_builds_no_graph(tok):
    model = tiny_gpt2(len(tok), seed=6, tokenizer=tok)
    model.config.resid_pdrop = 0.5
    model.train()
    a = minimal_pairs.sentence_logprobs(model, tok, ["The wolf sees a door."])
    b = minimal_pairs.sentence_logprobs(model, tok, ["The wolf sees a door."])
    assert model.training and a[0] == b[0]  # eval mode (no dropout) while scoring, training mode after
    assert all(p.grad is None for p in model.parameters())


def test_sequence_too_long_is_a_clear_error(tok):
    model = tiny_llama(len(tok), max_positions=8, tokenizer=tok)
    with pytest.raises(ValueError, match="exceeds the model's 8 positions"):
        minimal_pairs.sentence_logprobs(model, tok, ["Alice sees the garden and the river and the house."])


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_malformed_lines_are_reported_and_the_rest_scored(tmp_path, tok, llama):
    good = [json.dumps({"sentence_good": f"Alice sees {o}.", "sentence_bad": f"Alice see {o}.", "UID": "agr"})
            for o in ("the garden", "a door", "the river")]
    f = write_jsonl(tmp_path / "agr.jsonl", [
        good[0],
        '{"sentence_good": "Tom likes bread.", "sentence_bad": ',  # line 2: cut short
        good[1],
        json.dumps({"sentence_good": "Tom likes bread."}),  # line 4: no bad sentence
        "",  # blank lines are not errors
        json.dumps(["not", "an", "object"]),  # line 6
        json.dumps({"sentence_good": "", "sentence_bad": "x"}),  # line 7: empty
        good[2],
    ])
    result = minimal_pairs.score_minimal_pairs(llama, tok, tmp_path)
    lines = [(m["file"], m["line"]) for m in result["malformed"]]
    assert lines == [(str(f), 2), (str(f), 4), (str(f), 6), (str(f), 7)]
    reasons = [m["reason"] for m in result["malformed"]]
    assert "not valid JSON" in reasons[0] and "sentence_bad" in reasons[1]
    assert "JSON object" in reasons[2] and "non-empty" in reasons[3]
    assert result["pairs"] == 3 and result["files"]["agr"]["pairs"] == 3 and result["uids"]["agr"]["pairs"] == 3


def test_accuracy_per_file_per_uid_and_macro_average():
    P = minimal_pairs.MinimalPair
    pairs = [P("g", "b", "file_a", 1, "u1"), P("g", "b", "file_a", 2, "u1"), P("g", "b", "file_a", 3, "u2"),
             P("g", "b", "file_a", 4, "u2"), P("g", "b", "file_b", 1, "u3"), P("g", "b", "file_b", 2, "u3"),
             P("g", "b", "file_b", 3, "u3")]
    good = np.array([-1.0, -5.0, -2.0, -3.0, -1.0, -1.0, -4.0])
    bad = np.array([-2.0, -4.0, -2.0, -4.0, -2.0, -2.0, -5.0])  # pair 3 is a tie: the good sentence is chosen
    s = minimal_pairs.summarize_pairs(pairs, good, bad)
    assert s["files"]["file_a"] == {"pairs": 4, "correct": 3, "accuracy": 0.75}
    assert s["files"]["file_b"] == {"pairs": 3, "correct": 3, "accuracy": 1.0}
    assert s["uids"]["u1"]["accuracy"] == 0.5 and s["uids"]["u2"]["accuracy"] == 1.0 and s["uids"]["u3"]["accuracy"] == 1.0
    assert s["paradigm_key"] == "UID"
    assert s["macro_accuracy"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert s["micro_accuracy"] == pytest.approx(6 / 7) and s["correct"] == 6 and s["pairs"] == 7
    no_uid = [P(p.good, p.bad, p.file, p.line) for p in pairs]
    s2 = minimal_pairs.summarize_pairs(no_uid, good, bad)
    assert s2["paradigm_key"] == "file" and s2["uids"] == {} and s2["macro_accuracy"] == pytest.approx(0.875)


def test_limit_is_per_file_and_sources_are_checked(tmp_path):
    data = minimal_pairs.read_minimal_pairs(default_blimp_dir(), limit=3)
    assert len(data.files) == 8 and len(data.pairs) == 24
    assert {p.file for p in data.pairs} == {f.stem for f in data.files}
    single = minimal_pairs.read_minimal_pairs(data.files[0])
    assert len(single.pairs) == 50 and single.malformed == []
    with pytest.raises(ValueError, match="no .jsonl"):
        minimal_pairs.read_minimal_pairs(tmp_path)
    with pytest.raises(ValueError, match="neither"):
        minimal_pairs.read_minimal_pairs(tmp_path / "missing")


def test_perplexity_matches_cross_entropy_per_block(tok, llama):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, len(tok), size=16 * 7 + 5).astype(np.uint16)  # 7 full blocks, a short tail
    result = heldout.perplexity(llama, stream, block_size=16, batch_size=3)
    losses = []
    for k in range(7):
        block = torch.from_numpy(stream[16 * k: 16 * k + 17].astype(np.int64))[None]
        with torch.no_grad():
            logits = llama(input_ids=block[:, :-1]).logits.double()
        losses.append(torch.nn.functional.cross_entropy(logits[0], block[0, 1:], reduction="sum").item())
    expected = sum(losses) / (7 * 16)
    assert result["loss"] == pytest.approx(expected, abs=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert (result["tokens"], result["blocks"], result["block_size"]) == (7 * 16, 7, 16)
    few = heldout.perplexity(llama, stream, block_size=16, max_blocks=3)
    assert few["blocks"] == 3 and few["tokens"] == 48
    expected_few = (losses[0] + losses[3] + losses[6]) / 48  # spread evenly: first, middle, last
    assert few["loss"] == pytest.approx(expected_few, abs=1e-5)
    with pytest.raises(ValueError, match="fewer than block_size"):
        heldout.perplexity(llama, stream[:10], block_size=16)
    with pytest.raises(ValueError, match="positions"):
        heldout.perplexity(llama, stream, block_size=1024)


def test_saved_peer_is_scorable_like_the_babylm_causal_backend(tmp_path, tok, llama):
    """The BabyLM 2025 pipeline (causal backend) loads a folder with AutoProcessor/AutoTokenizer
    (fast: it asks for offsets) and AutoModelForCausalLM, lets the tokenizer add BOS, and
    scores tokens[1:] given tokens[:-1]; that must give our numbers."""
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    folder = save_model(llama, tok, tmp_path / "peer_0")
    loaded_tok = AutoTokenizer.from_pretrained(folder)
    assert loaded_tok.is_fast
    enc = loaded_tok("Alice sees the garden.", return_offsets_mapping=True)
    assert enc["input_ids"][0] == loaded_tok.bos_token_id and enc["offset_mapping"][0] == (0, 0)
    processor = AutoProcessor.from_pretrained(folder, padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    sentences = ["Alice sees the garden.", "Some boys see a door."]
    ours = minimal_pairs.sentence_logprobs(model, loaded_tok, sentences)
    for sentence, score in zip(sentences, ours):
        tokens = torch.tensor([processor(text=sentence)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=tokens[:, :-1]).logits
        theirs = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).sum().item()
        assert score == pytest.approx(theirs, abs=TOL)


def test_load_run_reads_peers_in_order_with_teacher_and_omega(tmp_path, tok):
    info = write_synthetic_run(tmp_path / "run", num_peers=3, steps=20, tokenizer=tok)
    run = run_reader.load_run(tmp_path / "run")
    assert run.peer_names == ["peer_0", "peer_1", "peer_2"]
    assert [wml_models.count_parameters(m) for m in run.peers] == info["parameters"]
    assert run.omega_source == "summary.json"
    np.testing.assert_allclose(run.omega, np.asarray(info["omega"]) / np.sum(info["omega"]))
    assert run.teacher is not None and run.tokenizer.is_fast and run.config["num_peers"] == 3
    assert isinstance(run.ensemble(), wml_models.EnsembleLM)


def test_omega_falls_back_to_metrics_then_uniform(tmp_path):
    def records(*rows):
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")

    (tmp_path / "summary.json").write_text(json.dumps({"omega": [0.2, 0.8]}))
    records({"kind": "outer", "step": 5, "omega": [0.6, 0.4]})
    assert run_reader.run_omega(tmp_path, 2)[1] == "summary.json"
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 10}))
    records({"kind": "outer", "step": 5, "omega": [0.6, 0.4]}, {"kind": "outer", "step": 10, "omega": [0.7, 0.3]},
            {"kind": "train", "step": 11, "omega": [0.1, 0.9]})
    w, source = run_reader.run_omega(tmp_path, 2)
    assert w.tolist() == [0.7, 0.3] and "outer" in source and "step 10" in source
    records({"kind": "train", "step": 1, "omega": [1.0, 3.0]})
    w, source = run_reader.run_omega(tmp_path, 2)
    assert w.tolist() == [0.25, 0.75] and "train" in source
    records({"kind": "train", "step": 1, "omega": [1.0, 1.0, 1.0]})  # wrong number of peers
    with pytest.warns(UserWarning, match="does not fit"):
        w, source = run_reader.run_omega(tmp_path, 2)
    assert w.tolist() == [0.5, 0.5] and source.startswith("uniform")


def test_peer_folders_sort_by_index(tmp_path):
    for i in (0, 1, 2, 10, 9):
        (tmp_path / "peers" / f"peer_{i}").mkdir(parents=True)
        (tmp_path / "peers" / f"peer_{i}" / "config.json").write_text("{}")
    (tmp_path / "peers" / "notes").mkdir()
    assert [p.name for p in RunLayout(tmp_path).peer_dirs()] == ["peer_0", "peer_1", "peer_2", "peer_9", "peer_10"]


def test_ensemble_perplexity_matches_the_float64_reference(tok):
    """perplexity(EnsembleLM) is L_2 = CE(Σ ω_i z_i, y) of method.md §4, as wml_reference computes it."""
    from wml_reference.losses import ensemble_loss

    models = [tiny_llama(len(tok), hidden=h, seed=20 + h, tokenizer=tok) for h in (24, 40)]
    omega = np.array([0.35, 0.65])
    stream = np.random.default_rng(1).integers(0, len(tok), size=12 * 4 + 1)
    got = heldout.perplexity(wml_models.EnsembleLM(models, omega), stream, block_size=12, batch_size=2)
    blocks = torch.from_numpy(np.stack([stream[12 * k: 12 * k + 13] for k in range(4)]).astype(np.int64))
    with torch.no_grad():
        logits = [m(input_ids=blocks[:, :-1]).logits.double().numpy() for m in models]
    assert got["loss"] == pytest.approx(ensemble_loss(logits, blocks[:, 1:].numpy(), omega), abs=1e-5)


def test_with_bos_makes_a_gpt2_style_tokenizer_babylm_ready(tmp_path, tok, llama):
    """A tokenizer that adds no BOS gets a post-processor that does; saved and reloaded, it
    still does, offsets still work, and scores are unchanged (scoring prepended it anyway)."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    gpt2_style = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|eos|>", pad_token="<|pad|>")
    assert not tokenizer.tokenizer_adds_bos(gpt2_style) and tokenizer.tokenizer_adds_bos(tok)
    assert tokenizer.with_bos(tok) is tok
    fixed = tokenizer.with_bos(gpt2_style)
    assert not tokenizer.tokenizer_adds_bos(gpt2_style)  # the original is left alone
    folder = save_model(llama, fixed, tmp_path / "peer")
    reloaded = AutoTokenizer.from_pretrained(folder)
    enc = reloaded("Alice sees the garden.", return_offsets_mapping=True)
    assert reloaded.is_fast and enc["input_ids"][0] == gpt2_style.eos_token_id
    assert enc["input_ids"][1:] == gpt2_style("Alice sees the garden.")["input_ids"]
    sentences = ["Alice sees the garden.", "Tom likes some bread."]
    np.testing.assert_allclose(minimal_pairs.sentence_logprobs(llama, reloaded, sentences),
                               minimal_pairs.sentence_logprobs(llama, gpt2_style, sentences), atol=1e-6, rtol=0)


def test_the_babylm_2024_pipeline_scores_a_pair_as_wml_eval_does(tmp_path, tok, llama):
    """The 2024 pipeline (lm-eval's HFLM, BLiMP as multiple choice with an empty context) scores the
    continuation ' ' + sentence, encoded without special tokens, after the prefix token (BOS, else
    EOS). Re-implemented here from its description; our log-probabilities must match it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_model(llama, tok, tmp_path / "peer_0")
    t, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    pair = minimal_pairs.MinimalPair("Alice sees the garden.", "Alice see the garden.", "agreement", 1)

    def pipeline_loglikelihood(sentence: str) -> float:
        prefix = t.bos_token_id if t.bos_token_id is not None else t.eos_token_id
        continuation = t.encode(" " + sentence, add_special_tokens=False)
        ids = torch.tensor([[prefix, *continuation]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.double(), -1)
        return float(logp[0, torch.arange(len(continuation)), ids[0, 1:]].sum())

    good, bad = minimal_pairs.pair_logprobs(model, t, [pair])
    assert good[0] == pytest.approx(pipeline_loglikelihood(pair.good), abs=1e-4)
    assert bad[0] == pytest.approx(pipeline_loglikelihood(pair.bad), abs=1e-4)


def test_babylm_predictions_have_the_submission_format():
    pairs = [minimal_pairs.MinimalPair("g0", "b0", "transitive", 1, index=0),
             minimal_pairs.MinimalPair("g1", "b1", "transitive", 2, index=1),
             minimal_pairs.MinimalPair("g0", "b0", "turn_taking", 1, index=0)]
    out = minimal_pairs.babylm_predictions(pairs, np.array([-1.0, -5.0, -2.0]), np.array([-2.0, -1.0, -2.0]))
    assert out == {"blimp": {"transitive": {"predictions": [{"id": "transitive_0", "pred": " g0"},
                                                              {"id": "transitive_1", "pred": " b1"}]}},
                   "blimp_supplement": {"turn_taking": {"predictions": [{"id": "turn_taking_0", "pred": " g0"}]}}}


def test_a_tie_chooses_the_good_sentence_in_the_accuracy_and_in_the_predictions(tmp_path, tok, llama):
    """One documented rule (docs/evaluation.md), the BabyLM pipeline's: a tie chooses the first
    sentence of the pair, the good one. A model whose logits are all zero gives every sentence of n
    tokens exactly n·log(1/V): pairs of one length tie exactly, a shorter sentence wins.

    Would catch: an accuracy that counts a tie as wrong while the predictions file, from the same
    scores, says the good sentence was chosen (or the other way round)."""
    import copy

    from wml_plugins.evaluators.minimal_pairs import MinimalPairsEvaluator

    flat = copy.deepcopy(llama)
    with torch.no_grad():
        flat.get_output_embeddings().weight.zero_()
    candidates = [("The cat sees the dog.", "The cat see the dog."), ("Alice likes the garden.", "Alice like the garden."),
                  ("A dog runs.", "A dog run."), ("Tom sees it.", "Tom see it.")]
    lengths = lambda pair: [len(ids) for ids in bos_ids(tok, pair)]   # noqa: E731
    tied = next(p for p in candidates if len(set(lengths(p))) == 1)
    longer_good = ("The cat sees the old dog in the garden.", "Cats see.")
    assert lengths(longer_good)[0] > lengths(longer_good)[1]
    write_jsonl(tmp_path / "pairs.jsonl", [json.dumps({"sentence_good": g, "sentence_bad": b}) for g, b in (tied, longer_good)])
    good, bad = minimal_pairs.pair_logprobs(flat, tok, minimal_pairs.read_minimal_pairs(tmp_path).pairs)
    assert good[0] == bad[0] and good[1] < bad[1]          # an exact tie, and a pair the bad sentence wins

    evaluator = MinimalPairsEvaluator(tmp_path / "pairs.jsonl", predictions_dir=str(tmp_path / "preds"), babylm_format=2024)
    result = evaluator(flat, tok, name="flat")
    preds = json.loads((tmp_path / "preds" / "flat.json").read_text())["blimp"]["pairs"]["predictions"]
    assert [p["pred"] for p in preds] == [" " + tied[0], " " + longer_good[1]]
    MinimalPairsEvaluator(tmp_path / "pairs.jsonl", predictions_dir=str(tmp_path / "p25"))(flat, tok, name="flat")
    preds = json.loads((tmp_path / "p25" / "flat" / "main" / "zero_shot" / "causal" / "blimp" / tmp_path.name
                        / "predictions.json").read_text())["pairs"]["predictions"]
    assert [p["pred"] for p in preds] == [tied[0], longer_good[1]]
    assert result["correct"] == 1 and result["micro_accuracy"] == 0.5
    assert list(minimal_pairs.chooses_good(good, bad)) == [True, False]
