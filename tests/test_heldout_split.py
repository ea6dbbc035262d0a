"""The held-out split: ω and evaluation both see every source of the held-out text, in proportion.

Held-out text is the corpus's files in name order (every k-th chunk of them, or a ``dev/`` folder);
splitting it into a first and a second half would tune ω on the first files and evaluate on the
last. :func:`heldout_halves` alternates pieces instead; these tests hold it to that.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from wml_framework.text.tokens import (
    HELDOUT_SPLIT_RULE,
    TokenData,
    heldout_halves,
    heldout_piece,
    prepare,
)

#: four sources, each writing words of its own letters only, so that a word names its source
ALPHABETS = {"a_grimm.txt": "abcde", "b_shakespeare.txt": "fghij", "c_childes.txt": "klmno", "d_wiki.txt": "pqrst"}


def _write_sources(folder: Path, words: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rnd = random.Random(seed)
    for name, letters in ALPHABETS.items():
        lines = [" ".join("".join(rnd.choice(letters) for _ in range(rnd.randint(2, 5))) for _ in range(10))
                 for _ in range(words // 10)]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _source_shares(data: TokenData, part: np.ndarray) -> dict:
    """Fraction of the words of ``part`` (decoded) that each source wrote."""
    words = data.tokenizer.decode(np.asarray(part).tolist(), skip_special_tokens=True).split()
    counts = {name: sum(1 for w in words if w[0] in letters) for name, letters in ALPHABETS.items()}
    total = sum(counts.values())
    return {name: n / total for name, n in counts.items()}


@pytest.mark.parametrize("layout", ["chunks of the corpus", "held-out files"])
def test_both_parts_hold_every_source_in_proportion(tmp_path, layout):
    """Catches: a first-half / second-half split (the ω part then holds no text of the last sources and
    the evaluated part none of the first), and any split that starves a source in one part."""
    train = _write_sources(tmp_path / "train", words=12000)
    val_corpus = str(_write_sources(tmp_path / "dev", words=3000, seed=1)) if layout == "held-out files" else ""
    data = prepare(str(train), 300, 0.1, cache=tmp_path / "cache", log=lambda m: None, val_corpus=val_corpus)
    whole = _source_shares(data, data.val)
    for part in (data.val_omega, data.val_eval):
        shares = _source_shares(data, part)
        for name in ALPHABETS:
            assert 0.6 * whole[name] < shares[name] < 1.4 * whole[name], (layout, name, shares, whole)


@pytest.mark.parametrize("n", [0, 1, 7, 100, 4 * 2048, 9 * 2048 + 17, 50_001])
def test_the_parts_are_disjoint_alternate_and_cover_the_stream(n):
    """Catches: a token in both parts or in neither (an overlapping or lossy split, e.g. the partial last
    piece dropped), parts out of stream order, pieces not alternating, and parts of unequal size."""
    val = np.arange(n, dtype=np.uint32)
    omega, evaluated = heldout_halves(val)
    assert np.array_equal(np.sort(np.concatenate([omega, evaluated])), val)
    assert np.all(np.diff(omega.astype(np.int64)) > 0) and np.all(np.diff(evaluated.astype(np.int64)) > 0)
    piece = heldout_piece(n)
    assert abs(len(omega) - len(evaluated)) <= piece
    assert np.array_equal(omega[:piece], val[:piece]) and np.array_equal(evaluated[:piece], val[piece:2 * piece])
    if n >= 2 * 2048 * 8:
        assert piece == 2048       # long streams alternate the corpus split's own chunks


def test_token_data_makes_the_parts_once():
    """Catches: the parts copied again for every ω batch (a copy of the whole held-out stream each
    outer step), and a cache that outlives a replaced stream."""
    data = TokenData(np.arange(1000, dtype=np.uint16), np.arange(5000, dtype=np.uint16), None, 300)
    assert data.val_omega is data.val_omega and data.val_eval is data.val_eval
    assert np.array_equal(data.val_omega, heldout_halves(data.val)[0])
    data.val = np.arange(100, dtype=np.uint16)
    assert len(data.val_omega) + len(data.val_eval) == 100


def test_resuming_a_checkpoint_of_another_split_rule_warns(tmp_path):
    """Catches: a run started under the old first/second-half split resumed silently (its evaluations
    before and after would score different text), and the rule not written into checkpoints."""
    from run_helpers import tiny_loop

    _, _, loop = tiny_loop(tmp_path)
    state = loop.state_dict()
    assert state["heldout_split"] == HELDOUT_SPLIT_RULE
    lines = []
    loop.log = lines.append
    loop.load_state_dict(state)
    assert not any("held-out split" in line for line in lines)
    del state["heldout_split"]
    loop.load_state_dict(state)
    assert any("held-out split 'first-and-second-half'" in line for line in lines)


def test_processes_preparing_one_corpus_at_once_share_the_cache_entry(tmp_path):
    """Two processes (members started together by --jobs) prepare the same corpus at the same moment
    (a barrier, not a time): one builds the cache entry, the other reads it; both get the same streams.
    Catches: both building the entry, writing and deleting the same files (one failed with
    FileNotFoundError on all.bin: seen by a review of `wml compare --jobs`)."""
    import multiprocessing

    from jobs_tasks import prepares_corpus
    from run_helpers import toy_corpus

    corpus = toy_corpus(tmp_path / "toy.txt", sentences=20000)
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(2)
    with context.Pool(2) as pool:
        results = pool.starmap(prepares_corpus, [(str(corpus), str(tmp_path / "cache"), barrier)] * 2)
    assert results[0][:2] == results[1][:2] and results[0][0] > 0
    assert sorted(r[2] for r in results) == [False, True]           # built once, then read from the cache
