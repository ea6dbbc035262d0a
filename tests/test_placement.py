"""``peer_placement = "spread"``: which device each peer goes to, and that a spread run is the same
run as a replicated one (on "cpu,cpu" everywhere, which checks the wiring; across the CPU and a GPU
where one is present, which checks the transfers)."""

from __future__ import annotations

import pytest
import torch
from run_helpers import read_metrics, tiny_loop

from wml_framework import config as cfgmod
from wml_framework.api import peer_logits
from wml_framework.runtime.placement import (
    assign,
    check_devices,
    device_names,
    peer_placement,
    rank_devices,
)


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


def test_peer_devices_is_read_one_way_by_the_config_and_the_run():
    """Blanks and empty items are ignored alike by the config's check and by the placement.

    Would catch: the config accepting " cpu , ,cpu" while the run splits it differently (a device
    named " cpu", or an empty one)."""
    assert device_names(" cpu , ,cpu ") == ["cpu", "cpu"] and device_names("") == device_names(None) == []
    cfg = cfgmod.from_dict({"peer_devices": " cpu , ,cpu ", "peer_placement": "spread"}, check_plugins=False)
    assert check_devices(device_names(cfg.peer_devices)) == [torch.device("cpu")] * 2
    peers = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    assert peer_placement(peers, "spread", device_names(cfg.peer_devices), torch.device("cpu")) == [torch.device("cpu")] * 2


def test_logits_come_back_to_the_inputs_device():
    """peer_logits moves inputs to the model and logits back (the identity when they agree)."""
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert peer_logits(lin, x).device == x.device
    assert torch.equal(peer_logits(lin, x), lin(x))


def _spread_equals_replicate(tmp_path, devices: str):
    runs = {}
    for placement in ("replicate", "spread"):
        cfg, data, loop = tiny_loop(tmp_path / placement, peer_placement=placement, peer_devices=devices,
                                    dtype="float64", max_steps=4, outer_every=2, num_peers=3,
                                    hypergradient="exact_adam")
        if placement == "spread":
            assert [str(d) for d in loop.peer_devices] == [str(next(p.parameters()).device) for p in loop.peers]
        loop.train()
        runs[placement] = (read_metrics(tmp_path / placement), [p.state_dict() for p in loop.peers])
    (m1, w1), (m2, w2) = runs["replicate"], runs["spread"]
    train1 = [r["loss"] + r["omega"] for r in m1 if r["kind"] == "train"]
    train2 = [r["loss"] + r["omega"] for r in m2 if r["kind"] == "train"]
    assert len(train1) == len(train2) == 4
    assert all(abs(a - b) <= 1e-6 for x, y in zip(train1, train2) for a, b in zip(x, y))
    outer1 = [r["omega"] for r in m1 if r["kind"] == "outer"]
    outer2 = [r["omega"] for r in m2 if r["kind"] == "outer"]
    assert len(outer1) == len(outer2) == 2
    assert all(abs(a - b) <= 1e-6 for x, y in zip(outer1, outer2) for a, b in zip(x, y))
    for a, b in zip(w1, w2):
        assert all(torch.allclose(a[k].cpu(), b[k].cpu(), rtol=1e-5, atol=1e-7) for k in a)


def test_a_spread_run_is_the_replicated_run(tmp_path):
    """Same losses, ω and weights, step by step, with "devices" that are both the CPU: this checks the
    wiring (placement, per-peer optimizers, clipping, the Adam-aware outer step), not real transfers.
    Would catch: placement that ignores peer_devices, a crash in the spread code path."""
    _spread_equals_replicate(tmp_path, "cpu,cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: moves peers between the CPU and cuda:0")
def test_a_spread_run_across_cpu_and_gpu_is_the_replicated_run(tmp_path):
    """Real transfers: one peer on the GPU, two on the CPU (the main device). Would catch: anything
    left assuming one device (logits, clipping norms, optimizer state, the hypergradient's tangents)."""
    _spread_equals_replicate(tmp_path, "cpu,cuda:0")
