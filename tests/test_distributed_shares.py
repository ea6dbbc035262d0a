"""What each rank of a data-parallel run works on, checked in one process by playing rank 1 of 2.

Would catch: every rank training on the whole global batch (or on rows that overlap another
rank's), the outer step's held-out batch not shared out, held-out evaluation and minimal-pair
scoring done in full by every rank, and a batch size that does not split evenly accepted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from run_helpers import tiny_loop

from wml_framework.runtime import distributed
from wml_framework.runtime.distributed import Context, DistributedError


class PlayedRank(Context):
    """Rank ``rank`` of ``world`` without a process group: collectives leave values as they are."""

    @property
    def active(self) -> bool:
        return True

    def mean_(self, tensors) -> None:
        pass

    def sum_floats(self, values):
        return list(values)

    def gather(self, obj):
        return [obj] * self.world

    def broadcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass


@pytest.fixture
def rank1(monkeypatch):
    played = PlayedRank(rank=1, world=2)
    monkeypatch.setattr(distributed, "_current", played)
    return played


def test_shares_are_disjoint_equal_and_cover_the_batch():
    rows = torch.arange(12).reshape(6, 2)
    shares = [Context(rank=r, world=3).share(rows) for r in range(3)]
    assert torch.equal(torch.cat(shares), rows)
    assert Context().share(rows) is rows


def test_a_batch_that_does_not_split_evenly_is_refused_naming_the_key():
    with pytest.raises(DistributedError, match="config key 'batch_size': value 6 .* 4 processes"):
        Context(rank=0, world=4).check_batch(6)


def _loop(tmp_path):
    seen = {"train": [], "val": []}
    cfg, data, loop = tiny_loop(tmp_path, outer_every=1, num_peers=2)
    inner_loss, original = loop.loss, loop.updater.step

    class Watching:
        needs_teacher = False

        def __call__(self, logits, labels, omega, teacher_logits=None):
            seen["train"].append(labels.clone())
            return inner_loss(logits, labels, omega, teacher_logits=teacher_logits)

        def __getattr__(self, name):
            return getattr(inner_loss, name)

    def step(ctx):
        seen["val"].append(ctx.val.labels.clone())
        return original(ctx)

    loop.loss, loop.updater.step = Watching(), step
    return cfg, data, loop, seen


def test_rank_one_of_two_trains_on_the_second_half_of_every_global_batch(tmp_path, rank1):
    cfg, data, loop, seen = _loop(tmp_path)
    loop.step()
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    expected = [data.batch("train", cfg.batch_size, cfg.block_size, gen)[1][2:] for _ in range(cfg.num_batches)]
    assert len(seen["train"]) == cfg.num_batches
    for got, want in zip(seen["train"], expected):
        assert torch.equal(got, want)
    val_gen = torch.Generator().manual_seed(cfg.seed + 12)
    assert torch.equal(seen["val"][0], data.batch("val", cfg.batch_size, cfg.block_size, val_gen)[1][2:])


def test_rank_one_of_two_scores_every_second_held_out_block(tmp_path, rank1, monkeypatch):
    from wml_framework.evaluation import heldout

    cfg, data, loop, _ = _loop(tmp_path)
    scored = []
    real = heldout.peer_logits

    def counting(model, x):
        scored.append(x.shape[0])
        return real(model, x)

    monkeypatch.setattr(heldout, "peer_logits", counting)
    out = loop.score_heldout([loop.peers[0]])
    all_blocks = out["blocks"]
    assert sum(scored) == len(range(1, all_blocks, 2))


def test_rank_one_of_two_scores_every_second_minimal_pair(rank1, monkeypatch):
    from wml_framework.evaluation import minimal_pairs as mp

    pairs = [mp.MinimalPair(good=f"good {i}", bad=f"bad {i}", file="f", line=i + 1, index=i) for i in range(4)]
    scored = []

    def fake_scores(model, tokenizer, sentences, **kwargs):
        scored.extend(sentences)
        return np.array([float(s.split()[1]) + (0.5 if s.startswith("good") else 0.0) for s in sentences])

    monkeypatch.setattr(mp, "sentence_logprobs", fake_scores)
    good, bad = mp.pair_logprobs(None, None, pairs)
    assert scored == ["good 1", "good 3", "bad 1", "bad 3"]
    # the played gather hands this rank's scores back for both ranks: slots of rank 0 get them too
    assert list(good[1::2]) == [1.5, 3.5] and list(bad[1::2]) == [1.0, 3.0]
