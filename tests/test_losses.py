"""The loss plugins (wml, kd, ce) and the ensemble loss against the float64 reference, plus the
properties the trainer relies on: token means, ignored labels, O(M) memory, finite results on
extreme logits in float32/bf16, and the benchmark script's --quick run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wml_reference as R
from wml_framework import config
from wml_framework.api import LossResult, ensemble_loss
from wml_framework.plugin_system.host import get_host
from wml_plugins.losses.ce import CELoss
from wml_plugins.losses.kd import KDLoss
from wml_plugins.losses.wml import WMLLoss, wml_peer_losses
from wml_plugins.updaters.hypergrad import mixed_omega_grad_autograd

ROOT = Path(__file__).resolve().parents[1]


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def problem(M: int, seed: int, shape=(2, 5), V: int = 7, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zs = [(scale * torch.randn(*shape, V, generator=g, dtype=torch.float64)).to(dtype) for _ in range(M)]
    y = torch.randint(0, V, shape, generator=g)
    flat = y.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[: flat.numel() // 3]] = -100
    flat[0] = 1
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.05
    teacher = (scale * torch.randn(*shape, V, generator=g, dtype=torch.float64)).to(dtype)
    return zs, y, w / w.sum(), teacher


def student_grads(loss, zs, y, w, teacher=None, omega_grad=False):
    leaves = [z.clone().requires_grad_() for z in zs]
    omega = w.clone().requires_grad_(omega_grad)
    res = loss(leaves, y, omega, teacher_logits=teacher)
    return res, torch.autograd.grad(res.total, leaves)


def np_(t):
    return t.detach().numpy()


# ------------------------------------------------------------------ against the reference

@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("omega_grad", [False, True], ids=["fused", "composed"])
def test_wml_matches_reference(M, omega_grad):
    zs, y, w, _ = problem(M, seed=M)
    alpha, T = 0.3, 1.7 if M % 2 else 0.6
    loss = WMLLoss(alpha, T)
    res, grads = student_grads(loss, zs, y, w, omega_grad=omega_grad)
    Z = [np_(z) for z in zs]
    assert rel(np_(res.per_peer), R.wml_losses(Z, y.numpy(), np_(w), alpha, T)) <= 1e-8
    assert rel(np_(res.ce), [R.cross_entropy(z, y.numpy()) for z in Z]) <= 1e-8
    kl_ref = [sum(w[j].item() * R.kl_div(Z[j], Z[i], y.numpy(), T) for j in range(M) if j != i) for i in range(M)]
    assert rel(np_(res.kl), kl_ref) <= 1e-8
    for g, r in zip(grads, R.wml_losses_grad(Z, y.numpy(), np_(w), alpha, T)):
        assert rel(np_(g), r) <= 1e-8
    assert float(res.total.detach()) == pytest.approx(float(res.per_peer.detach().sum()), rel=1e-14)
    assert torch.allclose(res.per_peer, (1 - alpha) * res.ce + alpha * res.kl, rtol=1e-12, atol=0)


def test_wml_gradient_in_omega_matches_reference():
    zs, y, w, _ = problem(4, seed=11)
    alpha, T = 0.45, 2.5
    omega = w.clone().requires_grad_()
    (g,) = torch.autograd.grad(WMLLoss(alpha, T)(zs, y, omega).total, omega)
    Z = [np_(z) for z in zs]
    ref = [alpha * sum(R.kl_div(Z[j], Z[i], y.numpy(), T) for i in range(4) if i != j) for j in range(4)]
    assert rel(np_(g), ref) <= 1e-8


@pytest.mark.parametrize("M", [1, 3, 6])
def test_kd_matches_reference(M):
    zs, y, w, teacher = problem(M, seed=20 + M)
    loss = KDLoss(alpha_kd=0.6, temperature=2.5)
    assert loss.needs_teacher
    res, grads = student_grads(loss, zs, y, w, teacher=teacher)
    Z, q = [np_(z) for z in zs], np_(teacher)
    assert rel(np_(res.per_peer), [R.kd_loss(z, q, y.numpy(), 0.6, 2.5) for z in Z]) <= 1e-8
    assert rel(np_(res.kl), [R.kl_div(q, z, y.numpy(), 2.5) for z in Z]) <= 1e-8
    assert rel(np_(res.ce), [R.cross_entropy(z, y.numpy()) for z in Z]) <= 1e-8
    for g, z in zip(grads, Z):
        assert rel(np_(g), R.kd_loss_grad(z, q, y.numpy(), 0.6, 2.5)) <= 1e-8
    assert torch.allclose(res.per_peer, 0.6 * res.ce + 0.4 * res.kl, rtol=1e-12, atol=0)


@pytest.mark.parametrize("M", [1, 4])
def test_ce_matches_reference(M):
    zs, y, w, _ = problem(M, seed=30 + M, shape=(11,))
    res, grads = student_grads(CELoss(), zs, y, w)
    for i, z in enumerate(zs):
        assert rel(float(res.per_peer[i].detach()), R.cross_entropy(np_(z), y.numpy())) <= 1e-8
        assert rel(np_(grads[i]), R.cross_entropy_grad(np_(z), y.numpy())) <= 1e-8
    assert torch.all(res.kl == 0)


@pytest.mark.parametrize("M", [1, 2, 5])
def test_ensemble_loss_matches_reference(M):
    zs, y, w, _ = problem(M, seed=40 + M)
    leaves = [z.clone().requires_grad_() for z in zs]
    omega = w.clone().requires_grad_()
    l2 = ensemble_loss(leaves, y, omega)
    grads = torch.autograd.grad(l2, [omega, *leaves])
    Z = [np_(z) for z in zs]
    assert rel(float(l2.detach()), R.ensemble_loss(Z, y.numpy(), np_(w))) <= 1e-8
    assert rel(np_(grads[0]), R.ensemble_loss_grad_omega(Z, y.numpy(), np_(w))) <= 1e-8
    for g, r in zip(grads[1:], R.ensemble_loss_grad_logits(Z, y.numpy(), np_(w))):
        assert rel(np_(g), r) <= 1e-8


def test_closed_form_mixed_gradient_equals_double_backward():
    zs, y, w, teacher = problem(5, seed=50)
    g = torch.Generator().manual_seed(1)
    tangents = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in zs]
    for loss in (WMLLoss(0.4, 1.9), WMLLoss(0.7, 1.0), WMLLoss(0.0, 1.0), KDLoss(), CELoss()):
        teach = teacher if loss.needs_teacher else None
        slow = mixed_omega_grad_autograd(loss, zs, y, w, tangents, teach)
        _, u = student_grads(loss, zs, y, w, teacher=teach)
        for fast in (loss.mixed_omega_grad(zs, y, w, tangents, teacher_logits=teach),
                     loss.mixed_omega_grad(zs, y, w, tangents, teacher_logits=teach, logit_grads=list(u))):
            assert fast.shape == (5,)
            assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-14), type(loss).__name__


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_logit_grads_fast_path_equals_autograd(dtype):
    zs, y, w, _ = problem(4, seed=55, dtype=dtype)
    for loss in (WMLLoss(0.4, 1.0), WMLLoss(0.3, 2.2)):
        fast = loss.logit_grads(zs, y, w)
        _, auto = student_grads(loss, zs, y, w)
        for f, a, z in zip(fast, auto, zs):
            assert f.shape == z.shape and f.dtype == dtype
            tol = dict(rtol=1e-10, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-2, atol=1e-3)
            assert torch.allclose(f.double(), a.double(), **tol)
            assert float(f[y == -100].abs().max()) == 0.0


def test_ensemble_loss_parts_match_autograd():
    from wml_framework.api import ensemble_loss_parts

    zs, y, w, _ = problem(3, seed=56)
    value, grad_w, G = ensemble_loss_parts(zs, y, w)
    Z = [np_(z) for z in zs]
    assert rel(value, R.ensemble_loss(Z, y.numpy(), np_(w))) <= 1e-8
    assert rel(np_(grad_w), R.ensemble_loss_grad_omega(Z, y.numpy(), np_(w))) <= 1e-8
    for i, r in enumerate(R.ensemble_loss_grad_logits(Z, y.numpy(), np_(w))):   # ∂L_2/∂z_i = ω_i G
        assert rel(w[i].item() * np_(G), r) <= 1e-8


def test_mixed_gradient_without_logits_only_when_promised():
    zs, y, w, _ = problem(4, seed=57)
    g = torch.Generator().manual_seed(2)
    tangents = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in zs]
    unit, hot = WMLLoss(0.5, 1.0), WMLLoss(0.5, 2.0)
    assert unit.mixed_from_logit_grads and not hot.mixed_from_logit_grads
    assert KDLoss.mixed_from_logit_grads and CELoss.mixed_from_logit_grads
    _, u = student_grads(unit, zs, y, w)
    fast = unit.mixed_omega_grad(None, y, w, tangents, logit_grads=list(u))
    assert torch.allclose(fast, mixed_omega_grad_autograd(unit, zs, y, w, tangents), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="loss 'wml'.*needs the logits"):
        hot.mixed_omega_grad(None, y, w, tangents, logit_grads=list(u))


# ------------------------------------------------------------------ conventions

def test_enclosing_bf16_autocast_does_not_lower_precision():
    """The trainer calls losses inside a bf16 autocast; their reductions must stay in float32."""
    zs, y, w, teacher = problem(3, seed=61, shape=(4, 16), V=300, dtype=torch.float32)
    for loss in (WMLLoss(0.5, 1.0), WMLLoss(0.5, 2.0), KDLoss(), CELoss()):
        plain = loss(zs, y, w, teacher_logits=teacher)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = loss(zs, y, w, teacher_logits=teacher)
        assert inside.total.dtype == torch.float32
        for a, b in ((plain.per_peer, inside.per_peer), (plain.kl, inside.kl)):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), type(loss).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ensemble_loss(zs, y, w)
    assert torch.allclose(inside, ensemble_loss(zs, y, w), rtol=1e-6)


def test_fused_and_composed_paths_agree_in_float32():
    zs, y, w, _ = problem(4, seed=60, shape=(3, 9), V=50, dtype=torch.float32)
    a = wml_peer_losses(zs, y, w, 0.5, 1.3, fused=True)
    b = wml_peer_losses(zs, y, w, 0.5, 1.3, fused=False)
    for x, z in zip(a, b):
        assert torch.allclose(x, z, rtol=1e-4, atol=1e-5)


def test_token_mean_and_ignored_positions():
    zs, y, w, teacher = problem(3, seed=70)
    for loss in (WMLLoss(0.5, 2.0), KDLoss(), CELoss()):
        base = loss(zs, y, w, teacher_logits=teacher).per_peer
        twice = loss([torch.cat([z, z]) for z in zs], torch.cat([y, y]), w,
                     teacher_logits=torch.cat([teacher, teacher])).per_peer
        assert torch.allclose(base, twice, rtol=1e-12, atol=0)            # a mean over tokens
        mask = (y == -100).unsqueeze(-1)
        noisy = [torch.where(mask, 1e3 * torch.randn_like(z), z).requires_grad_() for z in zs]
        res = loss(noisy, y, w, teacher_logits=teacher)
        assert torch.allclose(res.per_peer, base, rtol=1e-12, atol=0)     # ignored: no effect
        for gz in torch.autograd.grad(res.total, noisy):
            assert float(gz.masked_select(mask).abs().max()) == 0.0        # … and no gradient


def test_all_labels_ignored_gives_zero_loss_and_gradient():
    zs, y, w, _ = problem(2, seed=71)
    y = torch.full_like(y, -100)
    leaves = [z.clone().requires_grad_() for z in zs]
    res = WMLLoss()(leaves, y, w)
    assert float(res.total) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in torch.autograd.grad(res.total, leaves))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_extreme_logits_stay_finite(dtype, T):
    g = torch.Generator().manual_seed(3)
    zs = [(1e4 * torch.sign(torch.randn(2, 6, 40, generator=g))).to(dtype) for _ in range(3)]
    zs[1][0, 0] = 0.0
    teacher = (-1e4 * torch.sign(torch.randn(2, 6, 40, generator=g))).to(dtype)
    y = torch.randint(0, 40, (2, 6), generator=g)
    y[1, 2] = -100
    for loss in (WMLLoss(0.5, T), KDLoss(0.5, T), CELoss()):
        for omega_grad in (False, True):
            leaves = [z.clone().requires_grad_() for z in zs]
            w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64, requires_grad=omega_grad)
            res = loss(leaves, y, w, teacher_logits=teacher)
            grads = torch.autograd.grad(res.total, leaves + ([w] if omega_grad and res.total.grad_fn else []),
                                        allow_unused=True)
            for t in (res.total, res.per_peer, res.ce, res.kl, *[x for x in grads if x is not None]):
                assert torch.isfinite(t).all(), (type(loss).__name__, dtype, T, omega_grad)
            assert grads[0].dtype == dtype


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_fused_backward_refuses_a_second_pass(T):
    """The fused backward builds the gradient in its saved buffers; a second pass must fail loudly."""
    zs, y, w, _ = problem(2, seed=80, dtype=torch.float32)
    leaves = [z.clone().requires_grad_() for z in zs]
    total = WMLLoss(0.5, T)(leaves, y, w).total
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()


def test_memory_is_linear_in_the_number_of_peers():
    """Saved-for-backward bytes of the wml loss grow like M (the mixture form), not M²."""

    def saved_bytes(M: int) -> int:
        zs = [torch.randn(64, 500, requires_grad=True) for _ in range(M)]
        y = torch.randint(0, 500, (64,))
        seen, total = set(), [0]

        def pack(t):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total[0] += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            WMLLoss()(zs, y, torch.full((M,), 1.0 / M, dtype=torch.float64)).total
        return total[0]

    per_mnv = [saved_bytes(M) / (M * 64 * 500 * 4) for M in (2, 4, 8)]
    assert max(per_mnv) <= 1.6 and per_mnv[2] <= per_mnv[0] * 1.05, per_mnv


def test_errors_name_the_loss():
    zs, y, w, _ = problem(2, seed=90)
    with pytest.raises(ValueError, match="loss 'wml'.*omega"):
        WMLLoss()(zs, y, torch.ones(3, dtype=torch.float64) / 3)
    with pytest.raises(ValueError, match="loss 'wml'.*shape"):
        WMLLoss()([zs[0], zs[1][:, :2]], y, w)
    with pytest.raises(ValueError, match="loss 'kd'.*teacher"):
        KDLoss()(zs, y, w)
    with pytest.raises(ValueError, match="loss 'ce'.*labels"):
        CELoss()(zs, y[:, :2], w)
    with pytest.raises(ValueError, match="loss 'wml'.*loss_alpha"):
        WMLLoss(alpha=1.5)


def test_registered_through_the_plugin_host():
    host = get_host()
    assert {"wml", "kd", "ce"} <= set(host.names("loss"))
    cfg = config.from_dict({"loss_alpha": 0.2, "temperature": 3.0, "kd_alpha": 0.7, "kd_temperature": 1.5},
                           check_plugins=False)
    wml = host.create("loss", "wml", cfg)
    kd = host.create("loss", "kd", cfg)
    assert (wml.alpha, wml.temperature, wml.needs_teacher) == (0.2, 3.0, False)
    assert (kd.alpha_kd, kd.temperature, kd.needs_teacher) == (0.7, 1.5, True)
    assert host.get("loss", "wml").plugin == "losses"
    zs, y, w, _ = problem(2, seed=91)
    assert isinstance(host.create("loss", "ce", cfg)(zs, y, w), LossResult)


# ------------------------------------------------------------------ the benchmark script

@pytest.mark.slow
def test_benchmark_quick_run_writes_only_its_section(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--quick", "--doc", str(doc)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = doc.read_text()
    assert "keep me" in text and text.count("<!-- bench_losses:start -->") == 1
    assert "loss vs M separate cross-entropy losses" in text and "mirror" in text
    if os.access("/proc/self/clear_refs", os.W_OK):             # Linux: peaks really measured
        assert "n/a" not in text

    spec = importlib.util.spec_from_file_location("bench_losses", ROOT / "benchmarks" / "bench_losses.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.write_section(doc, "second version\n")              # rewriting replaces only our block
    text = doc.read_text()
    assert text.count("<!-- bench_losses:start -->") == 1 and "keep me" in text
    assert "second version" in text and "mirror update" not in text
