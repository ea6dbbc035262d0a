"""The peers' diversity (mean pairwise Jensen–Shannon divergence) and the ensemble's gain over its
best peer: the float64 oracle's properties, the torch measurement against the oracle, and the whole
scoring pass against a brute force per position on tiny models (causal and masked)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_models import build, tiny_gpt2_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers import RobertaConfig, RobertaForMaskedLM

import wml_reference as R
from wml_framework.api import IGNORE_INDEX, TokenInfo
from wml_framework.evaluation.diversity import (
    PairwiseJS,
    ensemble_gain,
    js_divergence_rows,
    peer_diversity,
)
from wml_framework.evaluation.heldout import block_starts
from wml_plugins.objectives import MaskedObjective

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LN2 = math.log(2.0)


def logit_arrays(n_min=1, n_max=6, v_min=2, v_max=9):
    """Pairs of same-shaped (n, V) logit arrays, from mild to peaked distributions."""
    return st.tuples(st.integers(n_min, n_max), st.integers(v_min, v_max)).flatmap(
        lambda s: st.tuples(*[arrays(np.float64, s, elements=st.floats(-30, 30)) for _ in range(2)]))


def naive_js(a_row, b_row) -> float:
    """JS of one position from the definition, with Python floats: ½ Σ p log(p/m) + ½ Σ q log(q/m)."""
    def softmax(row):
        top = max(row)
        e = [math.exp(x - top) for x in row]
        return [v / sum(e) for v in e]
    p, q = softmax(list(a_row)), softmax(list(b_row))
    m = [(x + y) / 2 for x, y in zip(p, q)]
    return 0.5 * sum(x * math.log(x / w) for x, w in zip(p, m) if x > 0) + \
        0.5 * sum(y * math.log(y / w) for y, w in zip(q, m) if y > 0)


# -- the oracle -----------------------------------------------------------------------------------

@FAST
@given(logit_arrays())
def test_reference_js_is_a_bounded_symmetric_divergence(pair):
    """Catches a KL in place of JS (asymmetric, unbounded), log base 2 (bound 1 instead of ln 2),
    and a missing ½ (bound 2 ln 2)."""
    a, b = pair
    ab, ba = R.js_divergence(a, b), R.js_divergence(b, a)
    assert ab >= -1e-15 and ab <= LN2 + 1e-12
    assert ab == pytest.approx(ba, rel=1e-12, abs=1e-15)
    assert R.js_divergence(a, a) == pytest.approx(0.0, abs=1e-15)


@FAST
@given(logit_arrays())
def test_reference_js_equals_the_definition_position_by_position(pair):
    """Catches M taken as the geometric mean (log-space average of the logits) and the mean over
    the vocabulary instead of the sum."""
    a, b = pair
    expected = sum(naive_js(a[t], b[t]) for t in range(len(a))) / len(a)
    assert R.js_divergence(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_reference_js_reaches_ln2_for_disjoint_distributions_and_skips_ignored_positions():
    """Catches a wrong bound and ignored (-100) positions counted in the mean."""
    a = np.array([[60.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 60.0], [5.0, 0.0]])
    assert R.js_divergence(a[:1], b[:1]) == pytest.approx(LN2, rel=1e-12)
    assert R.js_divergence(a, b, np.array([0, IGNORE_INDEX])) == pytest.approx(LN2, rel=1e-12)
    assert R.mean_pairwise_js([a, a, b], np.array([0, IGNORE_INDEX])) == pytest.approx(2 * LN2 / 3, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 peers"):
        R.mean_pairwise_js([a])


# -- the torch measurement against the oracle ------------------------------------------------------

@FAST
@given(logit_arrays())
def test_torch_js_rows_equal_the_reference(pair):
    """Catches the torch formula drifting from the oracle (float32 sums, a wrong mixture)."""
    a, b = pair
    la, lb = (torch.log_softmax(torch.from_numpy(z), -1) for z in (a, b))
    rows = js_divergence_rows(la, lb).numpy()
    expected = [R.js_divergence(a[t:t + 1], b[t:t + 1]) for t in range(len(a))]
    np.testing.assert_allclose(rows, expected, rtol=1e-10, atol=1e-13)


@FAST
@given(st.integers(2, 4), st.integers(0, 10_000))
def test_pairwise_accumulator_equals_the_reference_over_batches_and_labels(models, seed):
    """Catches a model paired with itself, the mean over pairs taken wrongly, and
    ignored positions counted (labels with -100 holes, added up over two batches)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (models, 4, 5, 7))
    y = rng.integers(0, 7, (4, 5))
    y[rng.random((4, 5)) < 0.4] = IGNORE_INDEX
    y[0, 0] = 1
    acc = PairwiseJS(models)
    for part in (slice(0, 1), slice(1, 4)):
        acc([torch.from_numpy(z[k, part]).float() for k in range(models)], torch.from_numpy(y[part]))
    sums, count = acc.totals()
    assert count == int((y != IGNORE_INDEX).sum())
    assert sum(sums) / count / len(sums) == pytest.approx(
        R.mean_pairwise_js(z.astype(np.float32), y), rel=1e-6)


def test_ensemble_gain_is_best_peer_minus_ensemble_and_none_when_undefined():
    """Catches the sign flipped, the worst or the mean peer taken, and a NaN loss passed on."""
    assert ensemble_gain([4.0, 3.5, 3.9], 3.4) == pytest.approx(0.1)
    assert ensemble_gain([4.0, 3.5], 3.6) == pytest.approx(-0.1)
    assert ensemble_gain([4.0, float("nan")], 3.6) is None
    assert ensemble_gain([4.0, 3.5], None) is None


# -- the whole pass against a brute force on tiny models ----------------------------------------

def _brute_force(models, stream, block_size, max_blocks, make_batch):
    """JS averaged over labelled positions and pairs, each position by the oracle, plus the
    losses, from a forward of each block alone."""
    per_pair, losses, count = {}, [0.0] * len(models), 0
    for start in block_starts(len(stream), block_size, max_blocks):
        x, y = make_batch(torch.as_tensor(stream[start:start + block_size + 1])[None], start)
        with torch.no_grad():
            zs = [m(input_ids=x).logits[0].double().numpy() for m in models]
        yy = y[0].numpy()
        for t in np.flatnonzero(yy != IGNORE_INDEX):
            count += 1
            for k, z in enumerate(zs):
                losses[k] -= float(z[t, yy[t]] - np.logaddexp.reduce(z[t]))
            for i in range(len(zs)):
                for j in range(i + 1, len(zs)):
                    per_pair[i, j] = per_pair.get((i, j), 0.0) + R.js_divergence(zs[i][t:t + 1], zs[j][t:t + 1])
    return sum(per_pair.values()) / len(per_pair) / count, [v / count for v in losses], count


def test_causal_diversity_equals_a_brute_force_over_the_evaluation_blocks():
    """Catches positions or blocks other than the held-out loss's (a shifted label, all blocks
    instead of the spread ``max_blocks``), and a batch mixing rows; the ensemble gain uses the
    same pass's losses."""
    models = [build(tiny_gpt2_config(vocab_size=40, n_embd=16, n_layer=1), seed=s) for s in (0, 1, 2)]
    stream = np.random.default_rng(0).integers(0, 40, 16 * 9 + 1)
    out = peer_diversity(models, stream, 16, batch_size=3, max_blocks=5, names=["a", "b", "c"])
    js, losses, count = _brute_force(models, stream, 16, 5, lambda row, start: (row[:, :-1], row[:, 1:]))
    d = out["diversity"]
    assert d["tokens"] == count == out["tokens"] == 5 * 16
    assert d["js"] == pytest.approx(js, rel=1e-5) and 0 < d["js"] < LN2
    np.testing.assert_allclose(out["losses"], losses, rtol=1e-5)
    assert d["ensemble_gain"] == pytest.approx(min(out["losses"]) - out["ensemble"], abs=1e-12)
    assert d["best"] == "abc"[int(np.argmin(losses))] and set(d["js_pairs"]) == {"a|b", "a|c", "b|c"}


def test_identical_peers_have_zero_diversity_and_zero_gain():
    """Catches a divergence that is not 0 for one model against itself (a temperature or smoothing
    inside), and a gain that is not 0 when the ensemble is that same model."""
    model = build(tiny_gpt2_config(vocab_size=40, n_embd=16, n_layer=1), seed=3)
    stream = np.random.default_rng(1).integers(0, 40, 16 * 4 + 1)
    d = peer_diversity([model, model], stream, 16, batch_size=2)["diversity"]
    assert d["js"] == pytest.approx(0.0, abs=1e-9) and d["ensemble_gain"] == pytest.approx(0.0, abs=1e-5)


def test_masked_diversity_covers_only_the_masked_positions():
    """Catches a masked model's divergence taken over every position (the unmasked ones are not
    predicted) or over masks drawn differently from the held-out loss's."""
    tokens = TokenInfo(vocab_size=50, mask_token_id=3, special_ids=(0, 1, 2, 3))

    def roberta(seed):
        torch.manual_seed(seed)
        return RobertaForMaskedLM(RobertaConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=40, pad_token_id=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)).eval()

    models, obj = [roberta(0), roberta(1)], MaskedObjective()
    stream = np.random.default_rng(2).integers(4, 50, 33 * 4 + 1)
    out = peer_diversity(models, stream, 32, batch_size=3, objective=obj, tokens_info=tokens)
    js, _, count = _brute_force(models, stream, 32, None,
                                lambda row, start: obj.batch(row, -1, torch.Generator().manual_seed(int(start) + 1), tokens))
    assert out["diversity"]["tokens"] == count < 4 * 32
    assert out["diversity"]["js"] == pytest.approx(js, rel=1e-5)
