"""``peer_placement = "spread"``: which device each peer goes to, and that a spread run is the same
run as a replicated one (here on CPU devices: the placement, the per-peer optimizers and the
cross-device forward path, which is the identity between two CPU "devices")."""

from __future__ import annotations

import pytest
import torch

from run_helpers import read_metrics, tiny_loop
from wml_framework import config as cfgmod
from wml_framework.api import peer_logits
from wml_framework.placement import assign, check_devices, peer_placement, rank_devices


def test_largest_peer_first_onto_the_least_loaded_device():
    """Would catch: round-robin placement (10 and 5 together on one device, 7 and 3 on the other)."""
    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert assign([10, 7, 5, 3], [d0, d1]) == [d0, d1, d1, d0]
    assert assign([1, 2, 3], [d0]) == [d0, d0, d0]


def test_each_process_takes_its_share_of_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    main = torch.device("cuda", 1)
    assert rank_devices([], main, local_rank=1, local_world=2) == [torch.device("cuda", 2), torch.device("cuda", 3)]
    assert rank_devices([], main, local_rank=0, local_world=1) == [torch.device("cuda", k) for k in range(4)]
    assert rank_devices(["cuda:3", "cuda:0"], main) == [torch.device("cuda", 3), torch.device("cuda", 0)]
    with pytest.raises(ValueError, match="has 4 CUDA device"):
        check_devices(["cuda:7"])


def test_bad_device_names_fail_in_the_config():
    with pytest.raises(cfgmod.ConfigError, match="peer_devices.*'gpu0'"):
        cfgmod.from_dict({"peer_devices": "cuda:0,gpu0"})
    with pytest.raises(cfgmod.ConfigError, match="peer_placement"):
        cfgmod.from_dict({"peer_placement": "scatter"})
    assert peer_placement([torch.nn.Linear(2, 2)] * 2, "replicate", [], torch.device("cpu")) == [torch.device("cpu")] * 2


def test_logits_come_back_to_the_inputs_device():
    """peer_logits moves inputs to the model and logits back (the identity when they agree)."""
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert peer_logits(lin, x).device == x.device
    assert torch.equal(peer_logits(lin, x), lin(x))


def test_a_spread_run_is_the_replicated_run(tmp_path):
    """Same losses, ω and weights, step by step (float64). Would catch: a peer left behind on the
    main device while its optimizer holds another, gradients clipped with a norm from another peer."""
    runs = {}
    for placement in ("replicate", "spread"):
        cfg, data, loop = tiny_loop(tmp_path / placement, peer_placement=placement, peer_devices="cpu,cpu",
                                    dtype="float64", max_steps=4, outer_every=2, num_peers=3)
        loop.train()
        runs[placement] = (read_metrics(tmp_path / placement), [p.state_dict() for p in loop.peers])
    (m1, w1), (m2, w2) = runs["replicate"], runs["spread"]
    train1 = [(r["loss"], r["omega"]) for r in m1 if r["kind"] == "train"]
    train2 = [(r["loss"], r["omega"]) for r in m2 if r["kind"] == "train"]
    assert train1 == train2 and len(train1) == 4
    assert [r["omega"] for r in m1 if r["kind"] == "outer"] == [r["omega"] for r in m2 if r["kind"] == "outer"]
    for a, b in zip(w1, w2):
        assert all(torch.equal(a[k], b[k]) for k in a)
