"""The objective plugin kind: the built-ins' masking, the hybrid's schedule, attention modes, the
guard, a third-party objective through the hook, and masked held-out scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from wml_framework import hookimpl
from wml_framework.api import (
    BIDIRECTIONAL,
    CAUSAL,
    IGNORE_INDEX,
    TokenInfo,
    attending,
    native_attention,
    peer_logits,
)
from wml_framework.evaluation.heldout import heldout_losses
from wml_framework.plugin_system.guards import checked_objective
from wml_framework.plugin_system.host import PluginError, PluginHost
from wml_framework.training.objective_fit import (
    ObjectiveMismatch,
    attends,
    check_attentions,
    check_head,
)
from wml_plugins.objectives import CausalObjective, HybridObjective, MaskedObjective

TOKENS = TokenInfo(vocab_size=50, mask_token_id=3, special_ids=(0, 1, 2, 3))


def blocks(b=8, t=65, seed=0, low=0):
    return torch.randint(low, 50, (b, t), generator=torch.Generator().manual_seed(seed))


def tiny_roberta():
    torch.manual_seed(0)
    return RobertaForMaskedLM(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=40, pad_token_id=2,
                                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, max_position_embeddings=40)).eval()


# -- the built-ins -------------------------------------------------------------------------------

def test_causal_is_the_shift_and_draws_nothing():
    """Catches a causal objective that shifts the wrong way or consumes random numbers (a causal
    run's data order would then differ from every run before objectives existed)."""
    block, gen = blocks(), torch.Generator().manual_seed(5)
    before = gen.get_state()
    x, y = CausalObjective().batch(block, 0, gen, TOKENS)
    assert torch.equal(x, block[:, :-1]) and torch.equal(y, block[:, 1:])
    assert torch.equal(gen.get_state(), before)


def test_masked_chooses_about_fifteen_percent_and_splits_80_10_10():
    """Catches a wrong probability, swapped shares (10% mask, 80% random), or labels left at
    unchosen positions."""
    block = blocks(64, 257, low=4)            # no special tokens: every position may be chosen
    x, y = MaskedObjective().batch(block, 0, torch.Generator().manual_seed(0), TOKENS)
    orig = block[:, :-1]
    chosen = y != IGNORE_INDEX
    share = chosen.float().mean().item()
    assert 0.14 < share < 0.16
    assert torch.equal(y[chosen], orig[chosen])
    assert torch.equal(x[~chosen], orig[~chosen])                 # unchosen inputs untouched
    masked = (x[chosen] == TOKENS.mask_token_id).float().mean().item()
    kept = (x[chosen] == orig[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.125             # random replacements may hit the same token


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.floats(0.01, 0.9), mask_share=st.floats(0.0, 1.0))
def test_masking_never_touches_or_draws_special_tokens(seed, p, mask_share):
    """Catches masking a BOS/EOS/pad token, or a random replacement that draws one."""
    random_share = (1.0 - mask_share) / 2
    block = blocks(4, 33, seed=seed)
    x, y = MaskedObjective(p, mask_share, random_share).batch(block, 0, torch.Generator().manual_seed(seed), TOKENS)
    orig = block[:, :-1]
    special = torch.isin(orig, torch.tensor(TOKENS.special_ids))
    assert (y[special] == IGNORE_INDEX).all() and torch.equal(x[special], orig[special])
    swapped = (x != orig) & (x != TOKENS.mask_token_id)
    assert not torch.isin(x[swapped], torch.tensor(TOKENS.special_ids)).any()


def test_masking_repeats_from_the_same_generator_state():
    """Catches masking drawn from the global RNG (a resumed run would mask differently)."""
    block = blocks()
    a = MaskedObjective().batch(block, 3, torch.Generator().manual_seed(9), TOKENS)
    torch.manual_seed(123)
    b = MaskedObjective().batch(block, 3, torch.Generator().manual_seed(9), TOKENS)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_masking_without_a_vocabulary_size_says_so():
    """Catches ``TokenInfo.of(None)`` (vocab 0) failing deep in ``randint`` with no word of why."""
    with pytest.raises(ValueError, match="vocabulary size"):
        MaskedObjective().batch(blocks(), 0, torch.Generator(), TokenInfo(0, 3, (0, 1, 2, 3)))


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1 / 3, 0.9, 1.0])
def test_hybrid_keeps_its_share_of_steps_causal_over_every_stretch(share):
    """Catches a schedule that drifts from ``causal_share`` (or is random, so a resume disagrees):
    every window of 50 to 2000 steps, anywhere in the first 100k, holds within 3 steps of its share."""
    h = HybridObjective(causal_share=share)
    causal = [h.attention(s) == CAUSAL for s in range(100_000)]
    assert causal == [h.attention(s) == CAUSAL for s in range(100_000)]        # the same every time
    sums = np.concatenate([[0], np.cumsum(causal)])
    for n in (50, 333, 2000):
        counts = sums[n:] - sums[:-n]
        assert np.abs(counts - n * share).max() <= 3, (n, counts.min(), counts.max())
    assert h.attention(-1) == CAUSAL == h.eval_attention


@pytest.mark.parametrize("share", [0.25, 0.5, 1 / 3])
@pytest.mark.parametrize("outer_every", [1, 2, 3, 4, 6, 10, 20, 100])
def test_hybrid_outer_steps_see_both_attentions_in_the_same_shares(share, outer_every):
    """The loop's outer step takes the attention of its step (every ``outer_every``-th). Catches an
    alternating schedule, under which all outer steps fall on causal steps when 1/share divides
    outer_every, so ω would be tuned on one attention only."""
    h = HybridObjective(causal_share=share)
    outer = [h.attention(k * outer_every - 1) == CAUSAL for k in range(1, 2001)]
    assert abs(sum(outer) - 2000 * share) <= 20, sum(outer)


def test_hybrid_masked_steps_predict_each_masked_token_from_the_position_before():
    """Catches MNTP labels put at the masked position itself (that is MLM) or the first token masked."""
    h = HybridObjective(causal_share=0.0, mask_token_share=1.0, random_token_share=0.0)
    block = blocks(16, 65, low=4)
    x, y = h.batch(block, 0, torch.Generator().manual_seed(1), TOKENS)
    orig = block[:, :-1]
    masked = x == TOKENS.mask_token_id
    assert not masked[:, 0].any()
    assert torch.equal(y[:, :-1] != IGNORE_INDEX, masked[:, 1:])
    assert torch.equal(y[:, :-1][masked[:, 1:]], orig[:, 1:][masked[:, 1:]])
    assert (y[:, -1] == IGNORE_INDEX).all()
    cx, cy = HybridObjective(causal_share=1.0).batch(block, 0, torch.Generator(), TOKENS)
    assert torch.equal(cy, block[:, 1:])


@pytest.mark.parametrize("bad", [dict(mask_probability=0.0), dict(mask_token_share=0.9, random_token_share=0.2)])
def test_impossible_shares_are_refused(bad):
    with pytest.raises(ValueError):
        MaskedObjective(**bad)


# -- attention -------------------------------------------------------------------------------------

def test_attending_makes_roberta_causal_and_llama_bidirectional():
    """Catches a mask that is built but not obeyed (bool masks are misread by eager attention) and
    attention left changed after the block."""
    x = blocks(2, 6, low=4)[:, :-1]
    y = x.clone()
    y[:, -1] = (y[:, -1] - 4 + 1) % 46 + 4
    rob, lla = tiny_roberta(), tiny_llama()
    assert native_attention(rob) == BIDIRECTIONAL and native_attention(lla) == CAUSAL
    with torch.no_grad():
        with attending([rob], CAUSAL):
            assert torch.allclose(peer_logits(rob, x)[:, :-1], peer_logits(rob, y)[:, :-1], atol=1e-6)
        assert not torch.allclose(peer_logits(rob, x)[:, 0], peer_logits(rob, y)[:, 0], atol=1e-6)
        with attending([lla], BIDIRECTIONAL):
            assert not torch.allclose(peer_logits(lla, x)[:, 0], peer_logits(lla, y)[:, 0], atol=1e-6)
        assert torch.allclose(peer_logits(lla, x)[:, :-1], peer_logits(lla, y)[:, :-1], atol=1e-6)
    assert attends(rob, CAUSAL) and attends(lla, BIDIRECTIONAL)


def test_a_model_that_ignores_the_mask_is_refused_in_one_line():
    """Catches a hybrid objective accepted for a model that silently attends one way only."""

    class Stubborn(torch.nn.Module):          # attends bidirectionally, whatever mask it is given
        wml_native_attention = BIDIRECTIONAL

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.config = RobertaConfig(vocab_size=50)

        def forward(self, x, attention_mask=None):
            h = self.emb(x)
            return h + h.mean(dim=1, keepdim=True)

    with pytest.raises(ObjectiveMismatch) as err:
        check_attentions("hybrid", HybridObjective(), Stubborn(), "teacher 'x'")
    assert "\n" not in str(err.value) and "ignores a causal attention mask" in str(err.value)


def test_the_head_must_match_the_objective():
    with pytest.raises(ObjectiveMismatch, match="objective 'masked' trains a masked LM, but the teacher is a causal LM"):
        check_head("masked", MaskedObjective(), tiny_llama().config, "the teacher")
    check_head("masked", MaskedObjective(), tiny_roberta().config, "the teacher")
    with pytest.raises(ObjectiveMismatch, match="use --objective masked"):
        check_head("causal", CausalObjective(), tiny_roberta().config, "the teacher")


# -- the guard and a third-party objective ---------------------------------------------------------

class _Entry:
    plugin, kind, name = "my_pkg", "objective", "broken"


@pytest.mark.parametrize("result, problem", [
    (lambda b: (b[:, :-1], b[:, 1:-1]), "labels have shape"),
    (lambda b: (b[:, :-1].float(), b[:, 1:]), "token ids"),
    (lambda b: (b[:, :-1], b[:, 1:] + 1000), "outside the vocabulary"),
    (lambda b: b[:, :-1], "two tensors"),
])
def test_the_guard_names_the_plugin_for_a_bad_batch(result, problem):
    """Catches an objective whose wrong output would train on nonsense instead of failing."""

    class Bad(CausalObjective):
        def batch(self, block, step, gen, tokens):
            return result(block)

    with pytest.raises(PluginError) as err:
        checked_objective(Bad(), _Entry()).batch(blocks(), 0, torch.Generator(), TOKENS)
    assert "my_pkg" in str(err.value) and "batch()" in str(err.value) and problem in str(err.value)


def test_the_guard_refuses_an_object_that_is_no_objective():
    class NoHead(CausalObjective):
        head = "seq2seq"

    with pytest.raises(PluginError, match="`head` must be one of causal, masked"):
        checked_objective(NoHead(), _Entry())


class SpanObjective(CausalObjective):
    """A third-party objective: only the second half of every block is scored."""

    def batch(self, block, step, gen, tokens):
        x, y = block[:, :-1].clone(), block[:, 1:].clone()
        y[:, : y.shape[1] // 2] = IGNORE_INDEX
        return x, y


class SpanPlugin:
    @hookimpl
    def wml_register_objectives(self, register):
        register("second_half", lambda cfg: SpanObjective(), help="score the second half of each block")


def test_a_third_party_objective_registers_and_trains(tmp_path):
    """Catches a core that ignores the objective's labels (scores every position) or does not
    reach objectives registered by other packages."""
    from run_helpers import tiny_loop

    host = PluginHost()
    host.register(SpanPlugin(), "span_pkg")
    assert "second_half" in host.names("objective")
    cfg, data, loop = tiny_loop(tmp_path, objective="causal")
    loop.objective = checked_objective(host.create("objective", "second_half", cfg), host.get("objective", "second_half"))
    seen = []

    class Spy:
        needs_teacher = False

        def __call__(self, logits, labels, omega, teacher_logits=None):
            seen.append(labels.clone())
            return inner(logits, labels, omega, teacher_logits=teacher_logits)

    inner, loop.loss = loop.loss, Spy()
    loop.accumulate()
    assert seen and all((y[:, : y.shape[1] // 2] == IGNORE_INDEX).all() for y in seen)


# -- held-out scoring -----------------------------------------------------------------------------

def test_masked_heldout_loss_is_the_same_at_any_batch_size_and_equals_a_brute_force_mean():
    """Catches masking that depends on how blocks are batched (evaluations would disagree with
    each other) and a mean taken over all positions instead of the labelled ones."""
    model = tiny_roberta()
    stream = np.random.default_rng(0).integers(4, 50, 33 * 6 + 1)
    obj = MaskedObjective()
    a = heldout_losses([model], stream, 32, batch_size=1, objective=obj, tokens_info=TOKENS)
    b = heldout_losses([model], stream, 32, batch_size=4, objective=obj, tokens_info=TOKENS)
    assert a["losses"][0] == pytest.approx(b["losses"][0], rel=1e-6) and a["tokens"] == b["tokens"]
    total, count = 0.0, 0
    for start in range(0, 6 * 32, 32):
        row = torch.as_tensor(stream[start:start + 33])[None]
        x, y = obj.batch(row, -1, torch.Generator().manual_seed(start + 1), TOKENS)
        with torch.no_grad():
            z = model(input_ids=x).logits
        keep = y != IGNORE_INDEX
        total += float(torch.nn.functional.cross_entropy(z[keep].double(), y[keep], reduction="sum"))
        count += int(keep.sum())
    assert a["tokens"] == count and 0 < count < 6 * 32
    assert a["losses"][0] == pytest.approx(total / count, rel=1e-6)
