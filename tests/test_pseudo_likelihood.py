"""Masked and hybrid scoring of minimal pairs (``wml_framework.evaluation.pseudo_likelihood``).

Each test names the wrong code it would catch:

* ``test_pll_matches_one_masked_copy_per_forward``: the prediction read at the wrong position, a
  special token scored (or a text token left out), padding that leaks into attention, copies of one
  sentence summed with ``out[idx] += …`` (repeated indices keep one copy's term), a batch size that
  changes the result;
* ``test_mntp_reads_the_position_before_the_mask``: mntp read at the mask (as mlm) or two back, the
  first token scored with nothing before it when the tokenizer adds no cls/bos;
* ``test_minicons_gives_the_same_pseudo_log_likelihoods``: any disagreement with an independent
  PLL implementation (minicons ``MaskedLMScorer``, PLL metric "original");
* ``test_ensemble_scores_the_mixture_of_logits``: an ensemble scored by one member, or by the mean
  of its members' log-probabilities instead of the log-softmax of Σ ω_i z_i;
* ``test_masked_scoring_of_a_causal_class_attends_both_ways`` / ``test_causal_scoring_of_a_masked_lm_is_causal``:
  the attention left to the model (a GPT-2 scored by PLL seeing only the past, a RoBERTa scored
  causally seeing the future);
* ``test_scoring_kind``: a masked LM scored causally by default, the config's declaration ignored,
  an unknown kind accepted, an ensemble of differently scored members scored silently;
* ``test_minimal_pairs_route_by_scoring``: ``sentence_logprobs``/``score_minimal_pairs``/the evaluator
  plugin not routing to PLL/MNTP (or routing a causal LM away from its unchanged scoring);
* ``test_errors``: no mask token, a bad position, a bad kind passing silently.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from wml_framework.evaluation.minimal_pairs import (
    read_minimal_pairs,
    score_minimal_pairs,
    sentence_logprobs,
    sequence_logprobs,
)
from wml_framework.evaluation.models import EnsembleLM
from wml_framework.evaluation.pseudo_likelihood import (
    masked_logprobs,
    masked_targets,
    pseudo_logprobs,
    scoring_kind,
)

SENTENCES = ["The cat sat on the mat.", "A dog ran to the park.", "These books are red.",
             "Who did the boy see?", "The girls who the teacher likes have left.", "Dogs bark.",
             "Many children played outside in the rain yesterday.", "She is reading a long book."]

#: sentences scored: lengths differ, so batches mix lengths (padding) and split sentences across batches
TEST_SENTENCES = ["The cat sat.", "Who did the boy see?", "Dogs bark loudly at the cat.", "A red book.",
                  "These girls have left the park."]


def masked_tokenizer(special: bool = True, vocab_size: int = 300):
    """A byte-level BPE fast tokenizer with a mask token. ``special``: RoBERTa-like, ``<s> … </s>``
    added by its post-processor (bos = cls = ``<s>``, eos = sep = ``</s>``); else no special token is
    added and the tokenizer has no bos/cls (the mntp case where the first token has nothing before it)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(SENTENCES * 3, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if special:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                       sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def tiny_roberta(tokenizer, seed: int = 0, dtype=torch.float32):
    """A random-init RoBERTa masked LM (2 layers, width 32), dropout 0, eval mode; a wide init so that
    its predictions are far from uniform."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=0.3)
    torch.manual_seed(seed)
    return RobertaForMaskedLM(cfg).to(dtype).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0, dtype=torch.float32):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def brute_force(model, tokenizer, sentences, kind, logits_of=None):
    """One masked copy per scored token, one unpadded forward each; the log-softmax at the mask
    (mlm) or the position before it (mntp). ``logits_of(ids)``: how to get logits (default: the
    model's plain call, which for RoBERTa attends both ways)."""
    logits_of = logits_of or (lambda ids: model(input_ids=ids).logits)
    special = tokenizer.cls_token_id is not None or tokenizer.bos_token_id is not None
    out = []
    with torch.no_grad():
        for sentence in sentences:
            enc = tokenizer(sentence, return_offsets_mapping=True)
            ids = torch.tensor(enc["input_ids"])
            total = 0.0
            for p, (_, end) in enumerate(enc["offset_mapping"]):
                if end == 0 or (kind == "mntp" and p == 0):
                    continue
                if kind == "mntp" and not special:
                    assert p > 0
                masked = ids.clone()
                masked[p] = tokenizer.mask_token_id
                z = logits_of(masked[None])[0, p if kind == "mlm" else p - 1]
                total += float(torch.log_softmax(z.double(), -1)[ids[p]])
            out.append(total)
    return np.array(out)


@pytest.fixture(scope="module")
def tok():
    return masked_tokenizer()


@pytest.fixture(scope="module")
def roberta64(tok):
    return tiny_roberta(tok, dtype=torch.float64)


def test_pll_matches_one_masked_copy_per_forward(tok, roberta64):
    expected = brute_force(roberta64, tok, TEST_SENTENCES, "mlm")
    for batch_size in (1, 3, 7, 200):
        got = pseudo_logprobs(roberta64, tok, TEST_SENTENCES, kind="mlm", batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # what is scored: every token of the text, none of <s> … </s>
    encoded = masked_targets(tok, ["The cat sat."], "mlm")[0]
    ids, positions = encoded
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert positions == list(range(1, len(ids) - 1))


def test_mntp_reads_the_position_before_the_mask(tok, roberta64):
    expected = brute_force(roberta64, tok, TEST_SENTENCES, "mntp")
    got = pseudo_logprobs(roberta64, tok, TEST_SENTENCES, kind="mntp", batch_size=5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert np.abs(got - pseudo_logprobs(roberta64, tok, TEST_SENTENCES, kind="mlm", batch_size=5)).min() > 1e-3
    # no cls/bos added: the first token has nothing before it and is not scored (as in the pipeline)
    bare = masked_tokenizer(special=False)
    ids, positions = masked_targets(bare, ["The cat sat."], "mntp")[0]
    assert positions == list(range(1, len(ids)))
    assert masked_targets(bare, ["The cat sat."], "mlm")[0][1] == list(range(len(ids)))
    model = tiny_roberta(bare, dtype=torch.float64)
    np.testing.assert_allclose(pseudo_logprobs(model, bare, TEST_SENTENCES, kind="mntp", batch_size=4),
                               brute_force(model, bare, TEST_SENTENCES, "mntp"), rtol=0, atol=1e-10)


def test_minicons_gives_the_same_pseudo_log_likelihoods(tok):
    from minicons import scorer

    # minicons 0.3.39 calls tokenizer.batch_encode_plus, which transformers 5 removed: the same call
    # is the tokenizer's own __call__ on a list (what batch_encode_plus did), given to a copy
    theirs_tok = copy.deepcopy(tok)
    object.__setattr__(theirs_tok, "batch_encode_plus", lambda texts, **kw: theirs_tok(list(texts), **kw))
    sentences = TEST_SENTENCES + SENTENCES
    for seed in (0, 1, 2):
        model = tiny_roberta(tok, seed=seed)
        # minicons' PLL "original": every token but pad/cls/sep masked alone, log-softmax at the mask, float32
        mlm = scorer.MaskedLMScorer(model, device="cpu", tokenizer=theirs_tok, PLL_metric="original")
        theirs = np.array(mlm.sequence_score(sentences, reduction=lambda x: x.sum(0).item()))
        ours = pseudo_logprobs(model, tok, sentences, kind="mlm", batch_size=16)
        assert np.abs(ours - theirs).max() < 1e-4, (ours, theirs)
    # the same tokens: minicons scores as many per sentence as wml
    counts = [len(t) for t in mlm.token_score(sentences)]
    assert counts == [len(ps) for _, ps in masked_targets(tok, sentences, "mlm")]


def test_ensemble_scores_the_mixture_of_logits(tok):
    a, b = tiny_roberta(tok, seed=2, dtype=torch.float64), tiny_roberta(tok, seed=3, dtype=torch.float64)
    omega = [0.3, 0.7]
    ens = EnsembleLM([a, b], omega)
    mixed = lambda ids: 0.3 * a(input_ids=ids).logits + 0.7 * b(input_ids=ids).logits  # noqa: E731
    for kind in ("mlm", "mntp"):
        got = pseudo_logprobs(ens, tok, TEST_SENTENCES, kind=kind, batch_size=6)
        np.testing.assert_allclose(got, brute_force(a, tok, TEST_SENTENCES, kind, logits_of=mixed), rtol=0, atol=1e-10)
    assert scoring_kind(ens) == "mlm"


def test_masked_scoring_of_a_causal_class_attends_both_ways(tok):
    model = tiny_gpt2(len(tok), dtype=torch.float64)

    def both_ways(ids):
        return model(input_ids=ids, attention_mask=torch.zeros(1, 1, ids.shape[1], ids.shape[1], dtype=torch.float64)).logits

    for kind in ("mlm", "mntp"):
        got = pseudo_logprobs(model, tok, TEST_SENTENCES, kind=kind, batch_size=4)
        np.testing.assert_allclose(got, brute_force(model, tok, TEST_SENTENCES, kind, logits_of=both_ways),
                                   rtol=0, atol=1e-10)


def test_causal_scoring_of_a_masked_lm_is_causal(tok, roberta64):
    seqs = [tok(s)["input_ids"] for s in TEST_SENTENCES]
    got = sequence_logprobs(roberta64, seqs, batch_size=2, pad_id=tok.pad_token_id)
    expected = []
    with torch.no_grad():
        for seq in seqs:
            ids = torch.tensor([seq])
            t = len(seq)
            bias = torch.zeros(t, t, dtype=torch.float64).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1),
                                                                      torch.finfo(torch.float64).min)
            lp = torch.log_softmax(roberta64(input_ids=ids, attention_mask=bias[None, None]).logits[0, :-1], -1)
            expected.append(float(lp.gather(-1, ids[0, 1:, None]).sum()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_scoring_kind(tok):
    roberta, gpt2 = tiny_roberta(tok), tiny_gpt2(len(tok))
    assert scoring_kind(roberta) == "mlm" and scoring_kind(gpt2) == "causal"
    assert scoring_kind(roberta, "mntp") == "mntp" and scoring_kind(gpt2, "mlm") == "mlm"
    assert scoring_kind(roberta, "auto") == "mlm"
    roberta.config.wml_objective_scoring = "mntp"
    gpt2.config.wml_objective_scoring = "mntp"
    assert scoring_kind(roberta) == "mntp" and scoring_kind(gpt2) == "mntp"
    assert scoring_kind(roberta, "causal") == "causal"
    with pytest.raises(ValueError, match="scoring must be one of"):
        scoring_kind(roberta, "pll")
    gpt2.config.wml_objective_scoring = "bert"
    with pytest.raises(ValueError, match="wml_objective_scoring='bert'"):
        scoring_kind(gpt2)
    with pytest.raises(ValueError, match="scored differently"):
        scoring_kind(EnsembleLM([tiny_roberta(tok), tiny_gpt2(len(tok))], [0.5, 0.5]))
    assert scoring_kind(EnsembleLM([tiny_roberta(tok), tiny_gpt2(len(tok))], [0.5, 0.5]), "mlm") == "mlm"


def test_minimal_pairs_route_by_scoring(tok, roberta64, tmp_path):
    from wml_plugins.evaluators.minimal_pairs import MinimalPairsEvaluator

    pairs = [("The cat sat.", "The cat sit."), ("Who did the boy see?", "Who did the boy see it?"),
             ("These girls have left.", "These girls has left.")]
    path = tmp_path / "agreement.jsonl"
    path.write_text("".join(json.dumps({"sentence_good": g, "sentence_bad": b, "UID": "agreement"}) + "\n"
                            for g, b in pairs), encoding="utf-8")
    good, bad = [g for g, _ in pairs], [b for _, b in pairs]
    for kind in ("mlm", "mntp"):
        direct = pseudo_logprobs(roberta64, tok, good + bad, kind=kind)
        np.testing.assert_array_equal(sentence_logprobs(roberta64, tok, good + bad, scoring=kind), direct)
        res = score_minimal_pairs(roberta64, tok, path, scoring=None if kind == "mlm" else kind, return_logprobs=True)
        assert res["scoring"] == kind
        np.testing.assert_allclose(res["logprob_good"] + res["logprob_bad"], direct, rtol=0, atol=1e-12)
        assert res["correct"] == int((direct[:3] >= direct[3:]).sum())
        ev = MinimalPairsEvaluator(path, scoring=kind if kind == "mntp" else "auto")
        assert ev(roberta64, tok)["scoring"] == kind
    # a causal LM: unchanged (BOS + presented sentence, next-token log-probabilities)
    gpt2 = tiny_gpt2(len(tok), dtype=torch.float64)
    res = score_minimal_pairs(gpt2, tok, read_minimal_pairs(path), return_logprobs=True)
    assert res["scoring"] == "causal"
    ids = [[tok.bos_token_id, *tok(" " + s, add_special_tokens=False)["input_ids"]] for s in good]
    np.testing.assert_allclose(res["logprob_good"], sequence_logprobs(gpt2, ids), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="minimal-pair scoring"):
        MinimalPairsEvaluator(path, scoring="pll")


def test_errors(tok, roberta64):
    from transformers import PreTrainedTokenizerFast

    no_mask = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(ValueError, match="no mask token"):
        pseudo_logprobs(roberta64, no_mask, ["The cat sat."], kind="mlm")
    with pytest.raises(ValueError, match="cannot be scored by mntp"):
        masked_logprobs(roberta64, [[0, 5, 6, 2]], [[0]], kind="mntp", mask_id=4)
    with pytest.raises(ValueError, match="'mlm' or 'mntp'"):
        masked_logprobs(roberta64, [[0, 5, 6, 2]], [[1]], kind="causal", mask_id=4)
    assert masked_logprobs(roberta64, [[0, 2], [0, 5, 2]], [[], []], kind="mlm", mask_id=4).tolist() == [0.0, 0.0]
