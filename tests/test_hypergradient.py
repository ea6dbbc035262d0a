"""The exact hypergradient for nn.Module peers: exact (1e-8) against the reference on linear peers,
against finite differences of F(ω) through real tiny GPT-2 and LLaMA models in float64, and the
structural promises (no M backward passes, peers and attention settings restored, dropout off)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_models import build, tiny_gpt2_config, tiny_llama_config
from torch.func import functional_call

import wml_reference as R
from wml_framework.api import Batch, ensemble_loss, trainable_parameters
from wml_framework.verify.problems import linear_peers
from wml_plugins.losses.ce import CELoss
from wml_plugins.losses.kd import KDLoss
from wml_plugins.losses.wml import WMLLoss
from wml_plugins.updaters.hypergrad import DOUBLE_VJP, JVP, hypergradient
from wml_plugins.updaters.hypergrad_modes import attn_implementation


def linear_problem(M: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    V, widths = 5, [2 + (3 * k) % 5 for k in range(M)]
    peers = linear_peers(widths, V, 0.9, g)
    Xt = [torch.randn(8, d, generator=g, dtype=torch.float64) for d in widths]
    Xv = [torch.randn(7, d, generator=g, dtype=torch.float64) for d in widths]
    yt, yv = torch.randint(0, V, (8,), generator=g), torch.randint(0, V, (7,), generator=g)
    yt[[0, 5]] = -100
    yv[2] = -100
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    args = ([x.numpy() for x in Xt], yt.numpy(), [x.numpy() for x in Xv], yv.numpy(),
            [p.weight.detach().numpy().T.copy() for p in peers])
    return peers, Batch(Xt, yt), Batch(Xv, yv), w / w.sum(), args


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("tangents", [DOUBLE_VJP, JVP])
def test_linear_peers_match_reference_exactly(M, tangents):
    peers, train, val, w, args = linear_problem(M, seed=M)
    alpha, T, gamma = 0.35, (1.0 if M % 2 == 0 else 1.8), 0.7     # T = 1 has its own closed form
    hg = hypergradient(peers, WMLLoss(alpha, T), w, train, val, gamma, tangents=tangents)
    ref = R.hypergradient(*args, w.numpy(), alpha, T, gamma)
    scale = max(np.max(np.abs(ref)), 1e-6)
    assert np.max(np.abs(hg.grad.numpy() - ref)) <= 1e-8 * scale
    assert hg.grad.dtype == torch.float64 and hg.method == "exact"


class WMLWithoutClosedForms:
    """The wml loss without its closed forms: the hypergradient must take its generic routes."""

    needs_teacher = False

    def __init__(self, alpha: float, T: float):
        self.inner = WMLLoss(alpha, T)

    def __call__(self, *a, **k):
        return self.inner(*a, **k)


def test_generic_double_backward_route_equals_closed_form():
    WithoutClosedForm = lambda: WMLWithoutClosedForms(0.6, 0.8)  # noqa: E731

    peers, train, val, w, args = linear_problem(4, seed=11)
    fast = hypergradient(peers, WMLLoss(0.6, 0.8), w, train, val, 0.4)
    slow = hypergradient(peers, WithoutClosedForm(), w, train, val, 0.4)
    assert torch.allclose(fast.grad, slow.grad, rtol=1e-12, atol=1e-15)
    assert np.allclose(fast.grad.numpy(), R.hypergradient(*args, w.numpy(), 0.6, 0.8, 0.4), rtol=1e-9, atol=1e-14)


def test_losses_independent_of_omega_have_no_second_term():
    peers, train, val, w, _ = linear_problem(3, seed=12)
    teacher = torch.randn(8, 5, dtype=torch.float64)
    for loss in (CELoss(), KDLoss()):
        hg = hypergradient(peers, loss, w, train, val, 0.5, teacher_logits=teacher)
        assert torch.equal(hg.second, torch.zeros(3, dtype=torch.float64))
        assert torch.equal(hg.grad, hg.direct)


def test_each_peer_runs_a_fixed_number_of_passes_whatever_m():
    """No M backward passes: every peer's forward runs twice with the double-VJP route (train and
    validation batch), three times with the JVP route, independently of the number of peers."""
    for tangents, expected in ((DOUBLE_VJP, 2), (JVP, 3)):
        peers, train, val, w, _ = linear_problem(5, seed=13)
        counts = [0] * 5
        for i, p in enumerate(peers):
            p.register_forward_pre_hook(lambda m, a, i=i: counts.__setitem__(i, counts[i] + 1))
        hypergradient(peers, WMLLoss(), w, train, val, 0.3, tangents=tangents)
        assert counts == [expected] * 5, (tangents, counts)


# ------------------------------------------------------------------ through Hugging Face models

def unrolled_objective(peers, loss, omega, train: Batch, val: Batch, gamma: float) -> float:
    """F(ω) = L_2(θ − γ ∇_θ L_1(θ, ω), ω), written independently with plain autograd."""
    named = [dict(p.named_parameters()) for p in peers]
    with torch.enable_grad():
        zs = [p(input_ids=train.inputs).logits for p in peers]
        flat = [t for d in named for t in d.values()]
        grads = torch.autograd.grad(loss(zs, train.labels, omega).total, flat)
    k, z_val = 0, []
    with torch.no_grad():
        for p, d in zip(peers, named):
            moved = {n: t - gamma * grads[k + j] for j, (n, t) in enumerate(d.items())}
            k += len(d)
            z_val.append(functional_call(p, moved, (), {"input_ids": val.inputs}).logits)
        return float(ensemble_loss(z_val, val.labels, omega))


def hf_problem(configs, V: int, seed: int = 0):
    peers = [build(c, seed=seed + i).double() for i, c in enumerate(configs)]
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(2, V, (2, 9), generator=g)
    vtoks = torch.randint(2, V, (2, 9), generator=g)
    train = Batch(toks[:, :-1], toks[:, 1:].clone())
    val = Batch(vtoks[:, :-1], vtoks[:, 1:].clone())
    train.labels[0, 0] = -100
    return peers, train, val


def finite_difference_check(peers, train, val, loss, w, gamma, h, tangents):
    hg = hypergradient(peers, loss, w, train, val, gamma, tangents=tangents)
    fd = np.zeros(len(peers))
    for j in range(len(peers)):
        e = torch.zeros_like(w)
        e[j] = h
        fd[j] = (unrolled_objective(peers, loss, w + e, train, val, gamma)
                 - unrolled_objective(peers, loss, w - e, train, val, gamma)) / (2 * h)
    return hg, fd


@pytest.mark.parametrize("tangents", [DOUBLE_VJP, JVP])
def test_gpt2_peers_match_finite_differences(tangents):
    V = 40
    peers, train, val = hf_problem([tiny_gpt2_config(vocab_size=V, n_embd=16, n_head=2, n_layer=2),
                                    tiny_gpt2_config(vocab_size=V, n_embd=24, n_head=4, n_layer=1)], V)
    w = torch.tensor([0.35, 0.65], dtype=torch.float64)
    hg, fd = finite_difference_check(peers, train, val, WMLLoss(0.5, 2.0), w, 0.8, 1e-4, tangents)
    assert np.max(np.abs(hg.grad.numpy() - fd)) <= 1e-7 * np.max(np.abs(fd))
    assert np.max(np.abs(hg.second.numpy())) > 1e-3 * np.max(np.abs(hg.direct.numpy()))   # the term matters


@pytest.mark.parametrize("tangents", [DOUBLE_VJP, JVP])
def test_llama_peers_match_finite_differences(tangents):
    """LLaMA's eager attention runs its softmax in float32 even in float64 (method.md §4), so the
    agreement is ~1e-5, not 1e-8; a wrong second term would be off by ~1e-2."""
    V = 40
    peers, train, val = hf_problem([tiny_llama_config(vocab_size=V, hidden=16, n_head=2, ffn=32, n_layer=2),
                                    tiny_llama_config(vocab_size=V, hidden=24, n_head=2, ffn=16, n_layer=1),
                                    tiny_llama_config(vocab_size=V, hidden=16, n_head=4, ffn=24, n_layer=1)], V, seed=3)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    hg, fd = finite_difference_check(peers, train, val, WMLLoss(0.6, 1.5), w, 0.8, 1e-3, tangents)
    assert np.max(np.abs(hg.grad.numpy() - fd)) <= 1e-4 * np.max(np.abs(fd))
    assert np.max(np.abs(hg.second.numpy())) > 1e-3 * np.max(np.abs(hg.direct.numpy()))


def test_hf_state_restored_and_dropout_off():
    """Peers come back in their own mode and attention implementation; with dropout active in
    train mode the hypergradient is still deterministic (it runs in eval mode)."""
    V = 30
    peers, train, val = hf_problem([tiny_gpt2_config(vocab_size=V, n_embd=16, n_head=2, n_layer=1,
                                                     resid_pdrop=0.3, attn_pdrop=0.3, embd_pdrop=0.3),
                                    tiny_llama_config(vocab_size=V, hidden=16, n_head=2, ffn=16, n_layer=1,
                                                      attention_dropout=0.3)], V)
    peers[0].train()
    peers[1].eval()
    before = [attn_implementation(p) for p in peers]
    assert before == ["sdpa", "sdpa"]
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    a = hypergradient(peers, WMLLoss(), w, train, val, 0.5)
    b = hypergradient(peers, WMLLoss(), w, train, val, 0.5)
    assert torch.equal(a.grad, b.grad)
    assert [attn_implementation(p) for p in peers] == before
    assert peers[0].training and all(m.training for m in peers[0].modules())
    assert not peers[1].training
    assert all(p.grad is None for peer in peers for p in peer.parameters())


def test_float32_models_work():
    V = 50
    peers, train, val = hf_problem([tiny_llama_config(vocab_size=V, hidden=16, n_head=2, ffn=16, n_layer=1),
                                    tiny_gpt2_config(vocab_size=V, n_embd=16, n_head=2, n_layer=1)], V)
    peers = [p.float() for p in peers]
    w = torch.tensor([0.4, 0.6], dtype=torch.float64)
    exact = hypergradient(peers, WMLLoss(), w, train, val, 0.5)
    first = hypergradient(peers, WMLLoss(), w, train, val, 0.5, method="first_order")
    assert exact.grad.dtype == torch.float64 and torch.isfinite(exact.grad).all()
    assert first.method == "first_order" and torch.equal(first.second, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("num_batches", [1, 3])
@pytest.mark.parametrize("loss_name", ["wml", "generic"])
def test_the_trainers_inner_gradients_give_the_fresh_hypergradient(tmp_path, num_batches, loss_name):
    """The trainer hands the updater ∇θL_1, z and ∂L_1/∂z of its last micro-batch; the hypergradient
    built from them equals the one computed from scratch at the same θ, in float64 to 1e-6.

    Would catch: u or G left scaled by 1/num_batches, G summed over every micro-batch instead of the
    last, G taken after clipping, the logits of another micro-batch, θ' stepped with the wrong sign."""
    import numpy as np

    from wml_framework.config import from_dict
    from wml_framework.plugin_system.host import PluginHost
    from wml_framework.text.tokens import TokenData
    from wml_framework.training.loop import TrainingLoop
    from wml_plugins.updaters.mirror import MirrorUpdater

    WithoutClosedForm = lambda: WMLWithoutClosedForms(0.4, 1.5)  # noqa: E731

    cfg = from_dict({"num_batches": num_batches, "batch_size": 2, "block_size": 12,
                     "grad_clip": 1e-3})     # a clip that would change G if it came first
    peers = [build(tiny_llama_config(hidden=16, n_layer=1, n_head=2, ffn=32), seed=s).double() for s in range(3)]
    rng = np.random.default_rng(0)
    data = TokenData(rng.integers(0, 128, 4000).astype(np.uint16), rng.integers(0, 128, 800).astype(np.uint16),
                     None, 128)
    loss = WMLLoss(0.4, 1.5) if loss_name == "wml" else WithoutClosedForm()
    loop = TrainingLoop(cfg, PluginHost(), peers, data, tmp_path, torch.device("cpu"), loss=loss,
                        updater=MirrorUpdater(3), log=lambda m: None)
    loop.state.omega = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)   # exact in float32 too
    _, last = loop.accumulate(capture=True)
    assert last.inner is not None
    val_x = torch.from_numpy(rng.integers(0, 128, (2, 13)))
    val = Batch(val_x[:, :-1], val_x[:, 1:])
    omega = loop.state.omega
    reused = hypergradient(peers, loss, omega, last.batch, val, 0.3, inner=last.inner)
    # the fresh computation by the same route for ż (forward mode); the double-VJP route takes its
    # step 1 through Hugging Face's eager attention, whose softmax is float32 (so 1e-8 apart)
    fresh = hypergradient(peers, loss, omega, last.batch, val, 0.3, tangents=JVP)
    # 1e-6, not 1e-15: Hugging Face's attention paths round at float32 precision even on float64
    # inputs (eager's softmax is float32), so J(u/n)·n and J(u) differ by ~1e-7 relative
    assert torch.allclose(reused.grad, fresh.grad, rtol=1e-6, atol=1e-10), (reused.grad - fresh.grad)
    double_vjp = hypergradient(peers, loss, omega, last.batch, val, 0.3)
    assert torch.allclose(reused.grad, double_vjp.grad, rtol=1e-6, atol=1e-9)
    assert reused.seconds["inner_grad"] < fresh.seconds["inner_grad"]


def test_a_frozen_parameter_is_left_out_by_the_trainer_and_the_hypergradient_alike(tmp_path):
    """The trainer's inner gradients, the Adam preconditioner and the hypergradient pair their lists
    with the same parameters (``api.trainable_parameters``): with a frozen one, the hypergradient
    from the trainer's own step still equals the fresh one.

    Would catch: one side listing the frozen parameter and the other not (the lists no longer pair
    up, and the reused step is refused or, worse, pairs gradients with the wrong tensors)."""
    from wml_framework.config import from_dict
    from wml_framework.plugin_system.host import PluginHost
    from wml_framework.text.tokens import TokenData
    from wml_framework.training.adam_precond import adam_preconditioner
    from wml_framework.training.loop import TrainingLoop
    from wml_plugins.updaters.mirror import MirrorUpdater

    peers = [build(tiny_llama_config(hidden=16, n_layer=1, n_head=2, ffn=32), seed=s).double() for s in range(2)]
    frozen = peers[0].model.norm.weight
    frozen.requires_grad_(False)
    names = list(trainable_parameters(peers[0]))
    assert "model.norm.weight" not in names and len(names) == len(list(peers[0].parameters())) - 1
    assert names == [n for n, p in peers[0].named_parameters() if p.requires_grad]      # parameters() order
    rng = np.random.default_rng(1)
    data = TokenData(rng.integers(0, 128, 4000).astype(np.uint16), rng.integers(0, 128, 800).astype(np.uint16),
                     None, 128)
    loss = WMLLoss(0.4, 1.5)
    cfg = from_dict({"num_batches": 1, "batch_size": 2, "block_size": 12}, check_plugins=False)
    loop = TrainingLoop(cfg, PluginHost(), peers, data, tmp_path, torch.device("cpu"), loss=loss,
                        updater=MirrorUpdater(2), log=lambda m: None)
    _, last = loop.accumulate(capture=True)
    assert [len(g) for g in last.inner.grads] == [len(names), len(list(peers[1].parameters()))]
    assert [len(d) for d in adam_preconditioner(loop.optimizers, peers, 1.0).diag] == [len(g) for g in last.inner.grads]
    val_x = torch.from_numpy(rng.integers(0, 128, (2, 13)))
    val = Batch(val_x[:, :-1], val_x[:, 1:])
    omega = loop.state.omega
    reused = hypergradient(peers, loss, omega, last.batch, val, 0.3, inner=last.inner)
    fresh = hypergradient(peers, loss, omega, last.batch, val, 0.3, tangents=JVP)
    assert torch.allclose(reused.grad, fresh.grad, rtol=1e-6, atol=1e-10), (reused.grad - fresh.grad)
    assert frozen.grad is None


def test_the_hypergradient_reads_as_named_steps():
    """Every function of the hypergradient's module stays under 80 lines (the whole computation was
    once one 85-line function). Would catch: the steps folded back into one body."""
    import ast
    import inspect

    from wml_plugins.updaters import hypergrad

    tree = ast.parse(inspect.getsource(hypergrad))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 >= 80}
    assert not long, long
