"""The GPU path: skipped without a CUDA device; `benchmarks/gpu_check.sh` runs them (`-m cuda`).

Would catch: a tensor left on the CPU in the training step or the hypergradient (a device mismatch
error), bf16 autocast that leaks into the float32 loss reductions (non-finite or drifting losses),
and a hypergradient whose value depends on the device.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_models import build, tiny_gpt2_config, tiny_llama_config
from run_helpers import tiny_loop

from wml_framework.api import Batch
from wml_plugins.losses.wml import WMLLoss
from wml_plugins.updaters.hypergrad import hypergradient

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]


def test_training_steps_in_bf16_on_the_gpu_are_finite_and_move_omega(tmp_path):
    cfg, _, loop = tiny_loop(tmp_path, device="cuda", bf16=True, outer_every=1, max_steps=4, eval_interval=2)
    assert all(next(p.parameters()).device.type == "cuda" for p in loop.peers)
    loop.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    outer = [r for r in records if r["kind"] == "outer"]
    assert len(train) == 4 and all(math.isfinite(x) for r in train for x in r["ce"])
    assert len(outer) == 4 and all(r["skipped"] is None for r in outer)
    omega = outer[-1]["omega"]
    assert abs(sum(omega) - 1) < 1e-9 and max(abs(w - 1 / len(omega)) for w in omega) > 0


@pytest.mark.parametrize("make", [
    lambda V: [tiny_gpt2_config(vocab_size=V, n_embd=16, n_head=2, n_layer=2),
               tiny_gpt2_config(vocab_size=V, n_embd=24, n_head=4, n_layer=1)],
    lambda V: [tiny_llama_config(vocab_size=V, hidden=16, n_head=2, ffn=32, n_layer=2),
               tiny_llama_config(vocab_size=V, hidden=24, n_head=2, ffn=16, n_layer=1)],
], ids=["gpt2", "llama"])
def test_the_hypergradient_on_the_gpu_equals_the_cpu_one_in_float64(make):
    V = 40
    g = torch.Generator().manual_seed(0)
    toks, vtoks = torch.randint(2, V, (2, 9), generator=g), torch.randint(2, V, (2, 9), generator=g)
    w = torch.tensor([0.35, 0.65], dtype=torch.float64)
    results = {}
    for device in ("cpu", "cuda"):
        peers = [build(c, seed=i).double().to(device) for i, c in enumerate(make(V))]
        train = Batch(toks[:, :-1].to(device), toks[:, 1:].to(device))
        val = Batch(vtoks[:, :-1].to(device), vtoks[:, 1:].to(device))
        results[device] = hypergradient(peers, WMLLoss(0.5, 2.0), w.to(device), train, val, 0.8).grad.cpu()
    assert torch.allclose(results["cuda"], results["cpu"], rtol=1e-6, atol=1e-9), results


def test_masking_on_the_gpu_draws_what_it_draws_on_the_cpu():
    """Catches masking that draws on x's device with a CPU generator (fails on cuda blocks)."""
    from wml_framework.api import TokenInfo
    from wml_plugins.objectives import masking

    tokens = TokenInfo(vocab_size=64, mask_token_id=3, special_ids=(0, 1, 2, 3))
    x = torch.randint(4, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    cpu = masking(x, torch.Generator().manual_seed(1), tokens, 0.3, 0.8, 0.1)
    gpu = masking(x.cuda(), torch.Generator().manual_seed(1), tokens, 0.3, 0.8, 0.1)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
