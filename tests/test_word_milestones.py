"""Words counted exactly (tokenization, blocks, the loop's records), word-milestone checkpoints
(written when the count passes them, kept and completed by a resume) and the word budget."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from run_helpers import tiny_loop

from wml_framework.text.corpus import iter_documents, plan_corpus
from wml_framework.text.tokenizer import document_encoder, train_tokenizer
from wml_framework.text.tokens import prepare
from wml_framework.training.milestones import (
    MILESTONE_FILE,
    WordMilestones,
    milestone_name,
    milestone_units,
    written_milestones,
)
from wml_framework.training.word_budget import WordBudget, planned_words

DOCS = ["The cat  sat.\nOn the mat, ok?", "héllo wörld — ünïcode 你好 世界 naïve café", "  spaced   out  ", "a",
        "tab\tseparated\u00a0nbsp\u2003em-space words", "x" * 40 + " long"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS * 30, 300)


_TEXT = st.text(alphabet=st.sampled_from(list("ab é你 \t\n\u00a0\u3000.,")), max_size=60)


@given(docs=st.lists(_TEXT, min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_word_starts_sum_to_the_whitespace_words_of_every_document(tokenizer, docs):
    """Catches a word start counted twice (byte-level pieces of one character share its span), a
    start missed (a word after a non-ASCII space) or the BOS/EOS tokens counted as words."""
    ids, words = document_encoder(tokenizer, words=True)(docs)
    assert len(words) == len(ids)
    assert int(words.sum()) == sum(len(d.split()) for d in docs)
    assert np.array_equal(ids, document_encoder(tokenizer)(docs))      # the ids are what they were


def test_a_corpus_counts_the_words_of_its_training_text(tmp_path, tokenizer):
    """Both split routes: held-out files (train words = the train files' words) and every k-th chunk
    (train words + the held-out chunks' words = the corpus's). Catches a words file split along
    other chunks than the ids, or counted over the held-out text."""
    train, dev = tmp_path / "c" / "train", tmp_path / "c" / "dev"
    train.mkdir(parents=True)
    dev.mkdir()
    rng = np.random.default_rng(0)
    vocab = ["the", "cat", "sat", "on", "a", "mat", "und", "café", "naïve"]
    text = "\n".join(" ".join(rng.choice(vocab, 12)) for _ in range(400))
    (train / "a.train").write_text(text)
    (dev / "a.dev").write_text(text[:3000])
    data = prepare(str(train), 300, 0.05, tokenizer=tokenizer, cache=tmp_path / "cache", log=lambda m: None)
    plan = plan_corpus(str(train), "")
    assert data.corpus_words == sum(len(d.split()) for d in iter_documents(plan.train, True))
    assert len(data.train_words) == len(data.train)
    # every k-th chunk: the held-out chunks' words are the rest
    alone = tmp_path / "alone.txt"
    alone.write_text(text)
    data = prepare(str(alone), 300, 0.1, tokenizer=tokenizer, cache=tmp_path / "cache", log=lambda m: None)
    assert len(data.train_words) == len(data.train)
    _, all_words = document_encoder(tokenizer, words=True)(list(iter_documents([alone], True)))
    held = int(all_words.sum()) - data.corpus_words
    assert 0 < held < 0.2 * int(all_words.sum())


def _loop_with_words(path: Path, **changes):
    cfg, data, lp = tiny_loop(path, **changes)
    data.train_words = np.random.default_rng(1).integers(0, 2, len(data.train)).astype(np.uint8)
    return cfg, data, lp


def test_a_step_counts_the_words_its_blocks_train_on(tmp_path):
    """The words of a step are those beginning in each block's ``block_size`` input tokens, over every
    micro-batch. Catches the +1 label token counted, a micro-batch left out, or words from other
    rows than those trained on."""
    cfg, data, lp = _loop_with_words(tmp_path, num_batches=2, max_steps=3)
    gen = torch.Generator().manual_seed(lp.settings.train_seed)
    expected = []
    for _ in range(3):
        words = 0
        for _ in range(2):
            starts = torch.randint(len(data.train) - cfg.block_size, (cfg.batch_size,), generator=gen).tolist()
            words += sum(int(data.train_words[s:s + cfg.block_size].sum()) for s in starts)
        expected.append(words)
    for _ in range(3):
        lp.step()
    records = [json.loads(x) for x in lp.records.read_text().splitlines() if '"train"' in x]
    assert [r["words"] for r in records] == list(np.cumsum(expected))
    assert lp.state.words == sum(expected)


def test_milestones_are_written_when_the_words_pass_them_and_a_resume_completes_them(tmp_path):
    """Catches a milestone written at the wrong step (by tokens or steps, not words), a milestone
    skipped when one step passes two, a rewrite of a milestone already written, and a milestone a
    killed run missed that its resume does not write."""
    unit = 20          # about 32 words a step: some steps pass two milestones

    def loop(path):
        cfg, data, lp = _loop_with_words(path, max_steps=8)
        lp.milestones = WordMilestones(path, "strict-small", unit, _TOKENIZER, "causal", {},
                                       lp.objective, log=lambda m: None)
        return lp

    straight = loop(tmp_path / "a")
    words = []
    for _ in range(8):
        straight.step()
        words.append(straight.state.words)
    found = written_milestones(tmp_path / "a")
    units = [u for u, _ in found]
    assert units == [k for k in milestone_units("strict-small") if k * unit <= words[-1]] and len(units) >= 3
    for k, folder in found:
        meta = json.loads((folder / MILESTONE_FILE).read_text())
        step = next(i + 1 for i, w in enumerate(words) if w >= k * unit)
        assert meta["step"] == step and meta["words"] == words[step - 1] and meta["name"] == milestone_name(k)
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["peer_0", "peer_1"]
    steps = [json.loads((f / MILESTONE_FILE).read_text())["step"] for _, f in found]
    assert len(set(steps)) < len(steps)                          # some step passed two milestones

    # checkpointed at step 2, killed after step 5: the milestones of steps 3-5 are on disk, those of
    # steps 6-8 never written; the resume repeats steps 3-8
    first = loop(tmp_path / "b")
    for _ in range(2):
        first.step()
    state = copy.deepcopy(first.state_dict())           # its tensors, not the live ones
    for _ in range(3):
        first.step()
    kept = {u: (f / MILESTONE_FILE).stat().st_mtime_ns for u, f in written_milestones(tmp_path / "b")}
    assert 0 < len(kept) < len(units)
    resumed = loop(tmp_path / "b")
    resumed.load_state_dict(state)
    for _ in range(6):
        resumed.step()
    again = written_milestones(tmp_path / "b")
    assert [u for u, _ in again] == units
    for (u, f), (_, g) in zip(found, again):
        if u in kept:
            assert (g / MILESTONE_FILE).stat().st_mtime_ns == kept[u]          # not written twice
        a = (f / "peer_1" / "model.safetensors").read_bytes()
        assert a == (g / "peer_1" / "model.safetensors").read_bytes()          # the same weights


_TOKENIZER = train_tokenizer(DOCS * 10, 260)   # saved beside each milestone's peers


def test_the_budget_counts_the_teacher_and_once_a_step():
    """Catches a budget without the teacher (the rules count ancillary models), or peers counted as
    if each read other text (M × the words) in the total."""
    b = WordBudget("strict-small", teacher=40_000_000, peers=70_000_000, num_peers=4)
    d = b.as_dict()
    assert d["total"] == 110_000_000 and d["budget"] == 100_000_000 and d["within_budget"] is False
    assert d["per_model"] == 40_000_000 + 4 * 70_000_000
    assert "OVER the strict-small budget" in b.line()
    given = WordBudget("strict", teacher=None, peers=5, num_peers=2)
    assert given.as_dict()["teacher_counted"] is False and "not known to wml" in given.line()
    assert planned_words(10, 100, corpus_words=3, corpus_tokens=4) == 750


def test_milestones_follow_the_rules_schedule():
    small, strict = milestone_units("strict-small"), milestone_units("strict")
    assert small == [*range(1, 10), *range(10, 101, 10)]
    assert strict == small + list(range(200, 1001, 100))
    assert milestone_name(30) == "chck_30M"
