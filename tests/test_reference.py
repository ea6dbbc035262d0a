"""Tests of the float64 oracle ``wml_reference`` (method.md §2, §3, §4, §8).

Three independent lines of evidence:
- values against a naive implementation written here from method.md's formulas (Python loops,
  math.log/exp), never calling the reference's internals;
- every gradient against 5-point central finite differences of the reference's own values;
- the hypergradient against finite differences of the unrolled objective F(ω).
Finite differences in ω use ``check_simplex=False`` (F is defined for any vector ω and the
hypergradient is its unconstrained gradient); a second test uses on-simplex directions e_j − e_k.
"""

from __future__ import annotations

import math
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wml_reference as R

# A silent overflow/NaN inside the oracle would show up as a RuntimeWarning: make it fail.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ============================================================ naive implementation (from method.md)

def naive_log_softmax(row, T=1.0):
    xs = [float(x) / T for x in row]
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def naive_ce(z, y):
    tot, n = 0.0, 0
    for t in range(len(y)):
        if y[t] == -100:
            continue
        n += 1
        tot -= naive_log_softmax(z[t])[int(y[t])]
    return tot / n


def naive_kl(q, z, y, T):
    tot, n = 0.0, 0
    for t in range(len(y)):
        if y[t] == -100:
            continue
        n += 1
        lq, lz = naive_log_softmax(q[t], T), naive_log_softmax(z[t], T)
        tot += sum(math.exp(a) * (a - b) for a, b in zip(lq, lz))
    return T * T * tot / n


def naive_wml(logits, y, omega, alpha, T):
    M = len(logits)
    return [
        (1 - alpha) * naive_ce(logits[i], y)
        + alpha * sum(omega[j] * naive_kl(logits[j], logits[i], y, T) for j in range(M) if j != i)
        for i in range(M)
    ]


def naive_ensemble_logits(logits, omega):
    M, n, V = len(logits), len(logits[0]), len(logits[0][0])
    return [[sum(omega[i] * logits[i][t][v] for i in range(M)) for v in range(V)] for t in range(n)]


def naive_ensemble(logits, y, omega):
    return naive_ce(naive_ensemble_logits(logits, omega), y)


def naive_ensemble_grad_omega(logits, y, omega):
    """§4: ∂L_2/∂ω_j = (1/n) Σ_t ⟨s_1(z_ens,t) − onehot(y_t), z_j,t⟩."""
    zens = naive_ensemble_logits(logits, omega)
    n = sum(1 for t in y if t != -100)
    out = []
    for zj in logits:
        acc = 0.0
        for t in range(len(y)):
            if y[t] == -100:
                continue
            p = [math.exp(a) for a in naive_log_softmax(zens[t])]
            acc += sum((p[v] - (v == y[t])) * zj[t][v] for v in range(len(p)))
        out.append(acc / n)
    return out


def naive_kd(zs, zt, y, a, T):
    return a * naive_ce(zs, y) + (1 - a) * naive_kl(zt, zs, y, T)


def naive_matmul(A, B):
    return [[sum(A[r][k] * B[k][c] for k in range(len(B))) for c in range(len(B[0]))] for r in range(len(A))]


def naive_unrolled(Xt, yt, Xv, yv, W, omega, alpha, T, gamma):
    """F(ω) = CE(Σ ω_i Xv_i W'_i), W'_i = W_i − γ X_iᵀ ∂L_i/∂z_i with the §3 logit gradients."""
    M = len(W)
    n = sum(1 for t in yt if t != -100)
    z = [naive_matmul(Xt[i], W[i]) for i in range(M)]
    V = len(W[0][0])
    W1 = []
    for i in range(M):
        dz = []
        for t in range(len(yt)):
            if yt[t] == -100:
                dz.append([0.0] * V)
                continue
            p1 = [math.exp(a) for a in naive_log_softmax(z[i][t])]
            pT = [math.exp(a) for a in naive_log_softmax(z[i][t], T)]
            row = []
            for v in range(V):
                g = (1 - alpha) * (p1[v] - (v == yt[t]))
                for j in range(M):
                    if j != i:
                        qT = math.exp(naive_log_softmax(z[j][t], T)[v])
                        g += alpha * omega[j] * T * (pT[v] - qT)
                row.append(g / n)
            dz.append(row)
        d = len(W[i])
        W1.append([[W[i][a][v] - gamma * sum(Xt[i][t][a] * dz[t][v] for t in range(len(yt)))
                    for v in range(V)] for a in range(d)])
    zv = [naive_matmul(Xv[i], W1[i]) for i in range(M)]
    return naive_ensemble(zv, yv, omega)


# ============================================================ helpers

def fd_grad(f, x, h=1e-3):
    """5-point central differences of scalar f at array x (error O(h⁴) + O(eps/h))."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        def at(d):
            xp = x.copy()
            xp[idx] += d
            return f(xp)
        g[idx] = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
    return g


def assert_grad_close(g, fd, rel=1e-6, atol=1e-9):
    g, fd = np.asarray(g), np.asarray(fd)
    assert g.shape == fd.shape
    err = float(np.max(np.abs(g - fd))) if g.size else 0.0
    scale = float(np.max(np.abs(g))) if g.size else 0.0
    assert err <= rel * scale + atol, f"max |grad - fd| = {err:.3e} vs max |grad| = {scale:.3e}"


def close(a, b, rtol=1e-10):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@st.composite
def problems(draw, max_M=4, min_V=1):
    """Peer logits (M, n, V), labels with some -100, ω on the simplex (sometimes with a 0), T, α."""
    seed = draw(st.integers(0, 2**32 - 1))
    M = draw(st.integers(1, max_M))
    n = draw(st.integers(1, 6))
    V = draw(st.integers(min_V, 6))
    mode = draw(st.sampled_from(["unit", "wide", "extreme"]))
    T = draw(st.sampled_from([1.0, 0.5, 2.0]) | st.floats(0.5, 4.0))
    alpha = draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0))
    p_ignore = draw(st.sampled_from([0.0, 0.3, 0.7]))
    zero_weight = draw(st.booleans())
    rng = np.random.default_rng(seed)
    shape = (M, n, V)
    if mode == "unit":
        z = rng.standard_normal(shape)
    elif mode == "wide":
        z = 5.0 * rng.standard_normal(shape)
    else:  # logits at ±50
        z = rng.choice([-50.0, 50.0], size=shape) + rng.standard_normal(shape)
    y = rng.integers(0, V, n)
    ignored = rng.random(n) < p_ignore
    ignored[rng.integers(n)] = False
    y[ignored] = -100
    w = rng.dirichlet(np.ones(M))
    if zero_weight and M > 1:
        w[rng.integers(M)] = 0.0
        w /= w.sum()
    return SimpleNamespace(z=z, y=y, w=w, T=T, alpha=alpha, M=M, n=n, V=V, rng=rng)


@st.composite
def linear_problems(draw, max_M=3):
    """Linear-softmax peers with different input widths, train and validation batches."""
    seed = draw(st.integers(0, 2**32 - 1))
    M = draw(st.integers(1, max_M))
    n_tr, n_va = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    V = draw(st.integers(2, 5))
    d = [draw(st.integers(1, 4)) for _ in range(M)]
    T = draw(st.sampled_from([1.0, 0.5, 2.5]) | st.floats(0.5, 3.0))
    alpha = draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0))
    gamma = draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 2.0))
    rng = np.random.default_rng(seed)

    def labels(n):
        y = rng.integers(0, V, n)
        ign = rng.random(n) < 0.3
        ign[rng.integers(n)] = False
        y[ign] = -100
        return y

    return SimpleNamespace(
        Xt=[rng.standard_normal((n_tr, di)) for di in d],
        Xv=[rng.standard_normal((n_va, di)) for di in d],
        W=[rng.standard_normal((di, V)) for di in d],
        yt=labels(n_tr), yv=labels(n_va),
        w=0.5 * rng.dirichlet(np.ones(M)) + 0.5 / M,  # interior: room for on-simplex differences
        T=T, alpha=alpha, gamma=gamma, M=M,
    )


# ============================================================ values vs the naive implementation

@FAST
@given(problems())
def test_values_match_naive(p):
    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    close(R.cross_entropy(z[0], y), naive_ce(z[0], y))
    close(R.kl_div(z[-1], z[0], y, T), naive_kl(z[-1], z[0], y, T))
    close(R.wml_losses(list(z), y, w, a, T), naive_wml(z, y, w, a, T))
    close(R.wml_losses(z, y, w, a, T), naive_wml(z, y, w, a, T))  # (M, n, V) array works too
    close(R.ensemble_loss(z, y, w), naive_ensemble(z, y, w))
    close(R.ensemble_loss_grad_omega(z, y, w), naive_ensemble_grad_omega(z, y, w))
    close(R.kd_loss(z[0], z[-1], y, a, T), naive_kd(z[0], z[-1], y, a, T))


@FAST
@given(problems(min_V=2))
def test_wml_losses_match_mixture_form(p):
    """§3 cost identity: Σ_{j≠i} ω_j KL = Σ_{j≠i} ω_j Σ_v q_j log q_j − ⟨Σ_{j≠i} ω_j q_j, log s_T(z_i)⟩ (×T²)."""
    from scipy.special import log_softmax

    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    keep = y != -100
    n = keep.sum()
    logs = log_softmax(z / T, axis=-1)[:, keep]  # (M, n, V)
    ce = -log_softmax(z, axis=-1)[:, keep][:, np.arange(n), y[keep]].mean(axis=1)
    expect = []
    for i in range(p.M):
        others = [j for j in range(p.M) if j != i]
        negent = sum(w[j] * np.sum(np.exp(logs[j]) * logs[j]) for j in others)
        mix = sum((w[j] * np.exp(logs[j]) for j in others), np.zeros_like(logs[i]))
        expect.append((1 - a) * ce[i] + a * T * T * (negent - np.sum(mix * logs[i])) / n)
    close(R.wml_losses(z, y, w, a, T), expect, rtol=1e-9)


def test_huge_logits_are_finite_and_match_naive():
    rng = np.random.default_rng(0)
    z = rng.choice([-1e4, 1e4], size=(3, 4, 5)) + rng.standard_normal((3, 4, 5))
    y = np.array([0, -100, 4, 2])
    w = np.array([0.2, 0.3, 0.5])
    for T in (1.0, 0.5, 3.0):
        vals = R.wml_losses(z, y, w, 0.5, T)
        assert np.all(np.isfinite(vals))
        close(vals, naive_wml(z, y, w, 0.5, T))
        for g in R.wml_losses_grad(z, y, w, 0.5, T):
            assert np.all(np.isfinite(g))
    close(R.ensemble_loss(z, y, w), naive_ensemble(z, y, w))
    assert np.all(np.isfinite(R.ensemble_loss_grad_omega(z, y, w)))
    close(R.kd_loss(z[0], z[1], y, 0.5, 2.0), naive_kd(z[0], z[1], y, 0.5, 2.0))
    assert np.all(np.isfinite(R.kd_loss_grad(z[0], z[1], y)))


def test_leading_dims_are_flattened():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 3, 5))
    q = rng.standard_normal((2, 3, 5))
    y = np.array([[1, -100, 4], [0, 2, 2]])
    zf, qf, yf = z.reshape(6, 5), q.reshape(6, 5), y.reshape(6)
    close(R.cross_entropy(z, y), R.cross_entropy(zf, yf))
    close(R.kl_div(q, z, y, 1.5), R.kl_div(qf, zf, yf, 1.5))
    g = R.cross_entropy_grad(z, y)
    assert g.shape == z.shape
    close(g.reshape(6, 5), R.cross_entropy_grad(zf, yf))
    close(R.kl_div_grad(q, z, y, 1.5).reshape(6, 5), R.kl_div_grad(qf, zf, yf, 1.5))
    assert np.all(g[0, 1] == 0)  # ignored position has no gradient


def test_single_peer():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((1, 4, 3))
    y = np.array([2, 0, -100, 1])
    close(R.wml_losses(z, y, [1.0], 0.3, 2.0), [0.7 * R.cross_entropy(z[0], y)])
    close(R.wml_losses_grad(z, y, [1.0], 0.3, 2.0)[0], 0.7 * R.cross_entropy_grad(z[0], y))
    close(R.ensemble_loss(z, y, [1.0]), R.cross_entropy(z[0], y))
    assert R.wml_b_grads(z, y, 0.3, 2.0).shape == (1, 1, 4, 3)
    assert np.all(R.wml_b_grads(z, y, 0.3, 2.0) == 0)
    np.testing.assert_array_equal(R.mirror_step([1.0], [5.0], 0.7), [1.0])


# ============================================================ gradients vs finite differences

@FAST
@given(problems(max_M=2))
def test_ce_and_kl_grads(p):
    z, q, y, T = p.z[0], p.z[-1], p.y, p.T
    assert_grad_close(R.cross_entropy_grad(z, y), fd_grad(lambda x: R.cross_entropy(x, y), z))
    assert_grad_close(R.kl_div_grad(q, z, y, T), fd_grad(lambda x: R.kl_div(q, x, y, T), z))


@FAST
@given(problems(max_M=2))
def test_kd_grad(p):
    zs, zt, y, T, a = p.z[0], p.z[-1], p.y, p.T, p.alpha
    assert_grad_close(R.kd_loss_grad(zs, zt, y, a, T), fd_grad(lambda x: R.kd_loss(x, zt, y, a, T), zs))


@pytest.mark.slow
@FAST
@given(problems())
def test_wml_losses_grad(p):
    """∂L_i/∂z_i with the other peers (the targets) held fixed."""
    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    grads = R.wml_losses_grad(z, y, w, a, T)
    assert len(grads) == p.M
    for i in range(p.M):
        def f(zi, i=i):
            zz = z.copy()
            zz[i] = zi
            return R.wml_losses(zz, y, w, a, T)[i]
        assert_grad_close(grads[i], fd_grad(f, z[i]))


@pytest.mark.slow
@FAST
@given(problems(max_M=3))
def test_wml_b_grads(p):
    """[j, i] entry = ∂B_j/∂z_i with B_j = α Σ_{i≠j} KL_T(sg(z_j) ‖ z_i)."""
    z, y, T, a = p.z, p.y, p.T, p.alpha
    dB = R.wml_b_grads(z, y, a, T)
    for j in range(p.M):
        for i in range(p.M):
            def Bj(zi, i=i, j=j):
                return a * sum(R.kl_div(z[j], zi if k == i else z[k], y, T) for k in range(p.M) if k != j)
            assert_grad_close(dB[j, i], fd_grad(Bj, z[i]))


@FAST
@given(problems(), st.booleans())
def test_ensemble_grad_omega(p, on_simplex):
    z, y, w = p.z, p.y, p.w
    if not on_simplex:  # F is defined for any ω; the gradient is the unconstrained one
        w = w + p.rng.standard_normal(p.M)
    g = R.ensemble_loss_grad_omega(z, y, w, check_simplex=False)
    assert_grad_close(g, fd_grad(lambda x: R.ensemble_loss(z, y, x, check_simplex=False), w, h=1e-4))
    G = R.ensemble_loss_grad_logits(z, y, w, check_simplex=False)
    for i in range(p.M):
        def f(zi, i=i):
            zz = z.copy()
            zz[i] = zi
            return R.ensemble_loss(zz, y, w, check_simplex=False)
        assert_grad_close(G[i], fd_grad(f, z[i], h=1e-4))


# ============================================================ linear peers and the hypergradient

@FAST
@given(linear_problems())
def test_linear_inner_grad(p):
    """∇_{W_i} L_1 vs differences of L_i in W_i (targets W_j, j ≠ i, fixed), and A + Σ ω_j ∇B_j."""
    grads = R.linear_inner_grad(p.Xt, p.yt, p.W, p.w, p.alpha, p.T)
    for i in range(p.M):
        def f(Wi, i=i):
            W = list(p.W)
            W[i] = Wi
            return R.wml_losses(R.linear_logits(p.Xt, W), p.yt, p.w, p.alpha, p.T)[i]
        assert_grad_close(grads[i], fd_grad(f, p.W[i]))
    dB = R.linear_b_grads(p.Xt, p.yt, p.W, p.alpha, p.T)
    for i in range(p.M):
        A = (1 - p.alpha) * p.Xt[i].T @ R.cross_entropy_grad(p.Xt[i] @ p.W[i], p.yt)
        close(grads[i], A + sum(p.w[j] * dB[j][i] for j in range(p.M)), rtol=1e-12)


@FAST
@given(linear_problems())
def test_unrolled_objective_matches_naive(p):
    close(R.unrolled_objective(p.Xt, p.yt, p.Xv, p.yv, p.W, p.w, p.alpha, p.T, p.gamma),
          naive_unrolled(p.Xt, p.yt, p.Xv, p.yv, p.W, p.w, p.alpha, p.T, p.gamma))


@FAST
@given(linear_problems())
def test_hypergradient_vs_coordinate_differences(p):
    args = (p.Xt, p.yt, p.Xv, p.yv, p.W)
    hg = R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma)
    fd = fd_grad(lambda x: R.unrolled_objective(*args, x, p.alpha, p.T, p.gamma, check_simplex=False), p.w)
    assert_grad_close(hg, fd)
    # off the simplex too (the gradient of F as a function of the unconstrained vector ω)
    w2 = p.w + 0.3 * np.arange(p.M)
    hg2 = R.hypergradient(*args, w2, p.alpha, p.T, p.gamma, check_simplex=False)
    fd2 = fd_grad(lambda x: R.unrolled_objective(*args, x, p.alpha, p.T, p.gamma, check_simplex=False), w2)
    assert_grad_close(hg2, fd2)


@FAST
@given(linear_problems())
def test_hypergradient_vs_on_simplex_directions(p):
    """Directional derivative along e_j − e_k (stays on the simplex, check_simplex on) = g_j − g_k."""
    args = (p.Xt, p.yt, p.Xv, p.yv, p.W)
    hg = R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma)
    for j in range(p.M):
        for k in range(j + 1, p.M):
            e = np.zeros(p.M)
            e[j], e[k] = 1.0, -1.0
            d = fd_grad(lambda s: R.unrolled_objective(*args, p.w + s[0] * e, p.alpha, p.T, p.gamma), np.zeros(1))
            assert_grad_close(np.array([hg[j] - hg[k]]), d)


@FAST
@given(linear_problems())
def test_first_order_is_the_small_gamma_limit(p):
    args = (p.Xt, p.yt, p.Xv, p.yv, p.W)
    fo = R.hypergradient_first_order(p.Xv, p.yv, p.W, p.w)
    close(fo, R.ensemble_loss_grad_omega(R.linear_logits(p.Xv, p.W), p.yv, p.w), rtol=1e-14)
    close(R.hypergradient(*args, p.w, p.alpha, p.T, 0.0), fo, rtol=1e-14)
    # linear convergence: (g(γ) − g_fo)/γ has a finite limit
    s1 = (R.hypergradient(*args, p.w, p.alpha, p.T, 1e-4) - fo) / 1e-4
    s2 = (R.hypergradient(*args, p.w, p.alpha, p.T, 1e-5) - fo) / 1e-5
    assert np.max(np.abs(s1 - s2)) <= 1e-2 * (1 + np.max(np.abs(s2)))


def _two_peer_problem(seed: int):
    rng = np.random.default_rng(seed)
    d, V, n = [3, 2], 4, 6
    Xt = [rng.standard_normal((n, k)) for k in d]
    Xv = [rng.standard_normal((n, k)) for k in d]
    W = [rng.standard_normal((k, V)) for k in d]
    return Xt, rng.integers(0, V, n), Xv, rng.integers(0, V, n), W, np.array([0.3, 0.7])


def test_hypergradient_second_term_is_not_zero():
    """Guards defect §10: the γ-term must contribute (and with the sign of Theorem 1)."""
    Xt, yt, Xv, yv, W, w = _two_peer_problem(3)
    exact = R.hypergradient(Xt, yt, Xv, yv, W, w, 0.5, 1.0, 1.0)
    W1 = R.virtual_step(Xt, yt, W, w, 0.5, 1.0, 1.0)
    direct = R.ensemble_loss_grad_omega(R.linear_logits(Xv, W1), yv, w)
    assert np.max(np.abs(exact - direct)) > 1e-3
    fd = fd_grad(lambda x: R.unrolled_objective(Xt, yt, Xv, yv, W, x, 0.5, 1.0, 1.0, check_simplex=False), w)
    assert_grad_close(exact, fd)


@FAST
@given(linear_problems(), st.integers(0, 2**32 - 1))
def test_adam_aware_hypergradient_vs_differences(p, seed):
    """With a diagonal preconditioner D (exact_adam): θ' = θ − γ D ⊙ ∇L_1; the hypergradient matches
    differences of F. Catches a D applied to θ' but not to ∇_θ L_2 (or the other way round)."""
    rng = np.random.default_rng(seed)
    D = [rng.uniform(0.2, 5.0, w.shape) for w in p.W]
    args = (p.Xt, p.yt, p.Xv, p.yv, p.W)
    hg = R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma, precond=D)
    fd = fd_grad(lambda x: R.unrolled_objective(*args, x, p.alpha, p.T, p.gamma, precond=D, check_simplex=False), p.w)
    assert_grad_close(hg, fd)
    W1 = R.virtual_step(p.Xt, p.yt, p.W, p.w, p.alpha, p.T, p.gamma, precond=D)
    G = R.linear_inner_grad(p.Xt, p.yt, p.W, p.w, p.alpha, p.T)
    for w1, w0, d, g in zip(W1, p.W, D, G):
        close(w1, w0 - p.gamma * d * g, rtol=1e-14)


@FAST
@given(linear_problems())
def test_a_preconditioner_of_ones_is_the_sgd_step(p):
    args = (p.Xt, p.yt, p.Xv, p.yv, p.W)
    ones = [np.ones_like(w) for w in p.W]
    close(R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma, precond=ones),
          R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma), rtol=1e-14)


def test_a_preconditioner_changes_the_second_term_and_is_checked():
    Xt, yt, Xv, yv, W, w = _two_peer_problem(5)
    D = [np.full_like(x, 3.0) for x in W]
    plain = R.hypergradient(Xt, yt, Xv, yv, W, w, 0.5, 1.0, 0.3)
    adam = R.hypergradient(Xt, yt, Xv, yv, W, w, 0.5, 1.0, 0.3, precond=D)
    assert np.max(np.abs(adam - plain)) > 1e-3
    # a constant D = c is the SGD step with γ·c
    close(adam, R.hypergradient(Xt, yt, Xv, yv, W, w, 0.5, 1.0, 0.9), rtol=1e-12)
    with pytest.raises(ValueError, match="precond\\[1\\] has shape"):
        R.hypergradient(Xt, yt, Xv, yv, W, w, 0.5, 1.0, 0.3, precond=[D[0], D[0]])
    with pytest.raises(ValueError, match="must be positive"):
        R.hypergradient(Xt, yt, Xv, yv, W, w, 0.5, 1.0, 0.3, precond=[-D[0], D[1]])


# ============================================================ masked labels (masked-LM objectives)
# BERT/RoBERTa masking scores ~15% of the positions; every other label is -100. The oracle must
# treat such sparse labels exactly as a batch of only the scored rows: same values (n counts the
# scored rows only), zero gradient at the others, and the hypergradient of that smaller batch.

def mask_labels(rng, shape, V, layout):
    """Labels of ``shape`` (B, T): ``bert`` scores each position with probability 0.15 and never the
    first sequence (a row with nothing to predict); ``one`` scores exactly one position of the batch."""
    y = rng.integers(0, V, shape)
    allowed = np.ones(shape, dtype=bool)
    if shape[0] > 1:
        allowed[0] = False
    scored = (rng.random(shape) < 0.15) & allowed
    if layout == "one" or not scored.any():
        scored[:] = False
        free = np.flatnonzero(allowed)
        scored.flat[free[rng.integers(len(free))]] = True
    y[~scored] = -100
    return y


@st.composite
def masked_problems(draw, max_M=3):
    """Peer logits (M, B, T, V) with masked-LM labels (B, T), ω on the simplex, T, α."""
    seed = draw(st.integers(0, 2**32 - 1))
    M, B, Tn, V = draw(st.integers(1, max_M)), draw(st.integers(1, 3)), draw(st.integers(2, 12)), draw(st.integers(2, 6))
    layout = draw(st.sampled_from(["bert", "one"]))
    T = draw(st.sampled_from([1.0, 0.5, 2.0]) | st.floats(0.5, 4.0))
    alpha = draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0))
    rng = np.random.default_rng(seed)
    z = 4.0 * rng.standard_normal((M, B, Tn, V))
    y = mask_labels(rng, (B, Tn), V, layout)
    return SimpleNamespace(z=z, y=y, w=rng.dirichlet(np.ones(M)), T=T, alpha=alpha, M=M, V=V, rng=rng,
                           keep=y != -100, layout=layout)


def _kept(p):
    """The same problem with only the scored rows: logits (M, n, V), dense labels (n,)."""
    return p.z[:, p.keep], p.y[p.keep]


def _directional(f, x, u, h=1e-3):
    """5-point central difference of f at x along u."""
    return (-f(x + 2 * h * u) + 8 * f(x + h * u) - 8 * f(x - h * u) + f(x - 2 * h * u)) / (12 * h)


@FAST
@given(masked_problems())
def test_masked_values_equal_naive_and_the_kept_rows(p):
    """Every loss on masked labels = the naive formula = the same loss on the scored rows alone.
    Would catch: a mean over all B·T positions (or over sequences) instead of the n scored ones;
    an ignored position that still enters a KL or the ensemble."""
    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    zk, yk = _kept(p)
    zf, yf = z.reshape(p.M, -1, p.V), y.reshape(-1)          # the naive code takes (n, V) rows
    for got, naive, kept in [
        (R.cross_entropy(z[0], y), naive_ce(zf[0], yf), R.cross_entropy(zk[0], yk)),
        (R.kl_div(z[-1], z[0], y, T), naive_kl(zf[-1], zf[0], yf, T), R.kl_div(zk[-1], zk[0], yk, T)),
        (R.wml_losses(z, y, w, a, T), naive_wml(zf, yf, w, a, T), R.wml_losses(zk, yk, w, a, T)),
        (R.ensemble_loss(z, y, w), naive_ensemble(zf, yf, w), R.ensemble_loss(zk, yk, w)),
        (R.ensemble_loss_grad_omega(z, y, w), naive_ensemble_grad_omega(zf, yf, w), R.ensemble_loss_grad_omega(zk, yk, w)),
        (R.kd_loss(z[0], z[-1], y, a, T), naive_kd(zf[0], zf[-1], yf, a, T), R.kd_loss(zk[0], zk[-1], yk, a, T)),
    ]:
        close(got, naive)
        close(got, kept, rtol=1e-12)
    if p.layout == "one":                      # n = 1: CE is −log s(z_t)[y_t] at the one scored position
        (t,) = np.flatnonzero(p.keep)
        close(R.cross_entropy(z[0], y), -naive_log_softmax(zf[0][t])[yf[t]])


@FAST
@given(masked_problems())
def test_masked_gradients_are_zero_off_the_mask_and_equal_the_kept_rows(p):
    """Every logit gradient is exactly 0 at ignored positions and, at the scored ones, the gradient of
    the scored rows alone. Would catch: (s − onehot)/n written into every row, or divided by B·T."""
    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    zk, yk = _kept(p)
    pairs = [(R.cross_entropy_grad(z[0], y), R.cross_entropy_grad(zk[0], yk)),
             (R.kl_div_grad(z[-1], z[0], y, T), R.kl_div_grad(zk[-1], zk[0], yk, T)),
             (R.kd_loss_grad(z[0], z[-1], y, a, T), R.kd_loss_grad(zk[0], zk[-1], yk, a, T))]
    pairs += list(zip(R.wml_losses_grad(z, y, w, a, T), R.wml_losses_grad(zk, yk, w, a, T)))
    pairs += list(zip(R.ensemble_loss_grad_logits(z, y, w), R.ensemble_loss_grad_logits(zk, yk, w)))
    dB, dBk = R.wml_b_grads(z, y, a, T), R.wml_b_grads(zk, yk, a, T)
    pairs += [(dB[j, i], dBk[j, i]) for j in range(p.M) for i in range(p.M)]
    for g, gk in pairs:
        assert g.shape == z.shape[1:]
        assert np.all(g[~p.keep] == 0.0)
        close(g[p.keep], gk, rtol=1e-12)


@FAST
@given(masked_problems())
def test_masked_gradients_vs_finite_differences(p):
    """Directional 5-point differences along random directions that move ignored logits too, so a
    gradient that is wrong only off the mask (or on it) shows."""
    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    rng = p.rng

    def check(grad, f, x):
        for _ in range(2):
            u = rng.standard_normal(x.shape)
            fd = _directional(f, x, u)
            assert abs(float(np.sum(grad * u)) - fd) <= 1e-6 * max(abs(fd), 1.0), (float(np.sum(grad * u)), fd)

    check(R.cross_entropy_grad(z[0], y), lambda x: R.cross_entropy(x, y), z[0])
    check(R.kl_div_grad(z[-1], z[0], y, T), lambda x: R.kl_div(z[-1], x, y, T), z[0])
    check(R.kd_loss_grad(z[0], z[-1], y, a, T), lambda x: R.kd_loss(x, z[-1], y, a, T), z[0])
    for i, g in enumerate(R.wml_losses_grad(z, y, w, a, T)):
        def f(x, i=i):
            zz = z.copy()
            zz[i] = x
            return R.wml_losses(zz, y, w, a, T)[i]
        check(g, f, z[i])
    check(R.ensemble_loss_grad_omega(z, y, w), lambda x: R.ensemble_loss(z, y, x, check_simplex=False), w)


@st.composite
def masked_linear_problems(draw, max_M=3):
    """Linear-softmax peers whose training and held-out labels are masked-LM labels."""
    seed = draw(st.integers(0, 2**32 - 1))
    M, V = draw(st.integers(1, max_M)), draw(st.integers(2, 5))
    n_tr, n_va = draw(st.integers(4, 24)), draw(st.integers(4, 24))
    d = [draw(st.integers(1, 4)) for _ in range(M)]
    layouts = draw(st.tuples(st.sampled_from(["bert", "one"]), st.sampled_from(["bert", "one"])))
    T = draw(st.sampled_from([1.0, 0.5, 2.5]) | st.floats(0.5, 3.0))
    alpha = draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0))
    gamma = draw(st.sampled_from([0.1, 1.0]) | st.floats(0.0, 2.0))
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        Xt=[rng.standard_normal((n_tr, di)) for di in d], Xv=[rng.standard_normal((n_va, di)) for di in d],
        W=[rng.standard_normal((di, V)) for di in d],
        yt=mask_labels(rng, (1, n_tr), V, layouts[0])[0], yv=mask_labels(rng, (1, n_va), V, layouts[1])[0],
        w=0.5 * rng.dirichlet(np.ones(M)) + 0.5 / M, T=T, alpha=alpha, gamma=gamma, M=M)


@FAST
@given(masked_linear_problems())
def test_masked_hypergradient_vs_differences_and_the_kept_rows(p):
    """The exact hypergradient on masked labels = coordinate differences of F(ω) = the hypergradient
    of the batches cut down to their scored rows (an ignored token moves neither θ' nor L_2).
    Would catch: ∇_θ L_1 or ∇_θ L_2 with ignored rows in them, or a 1/(B·T) in either step."""
    args = (p.Xt, p.yt, p.Xv, p.yv, p.W)
    hg = R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma)
    fd = fd_grad(lambda x: R.unrolled_objective(*args, x, p.alpha, p.T, p.gamma, check_simplex=False), p.w)
    assert_grad_close(hg, fd)
    kt, kv = p.yt != -100, p.yv != -100
    kept = ([x[kt] for x in p.Xt], p.yt[kt], [x[kv] for x in p.Xv], p.yv[kv], p.W)
    close(hg, R.hypergradient(*kept, p.w, p.alpha, p.T, p.gamma), rtol=1e-11)
    close(R.unrolled_objective(*args, p.w, p.alpha, p.T, p.gamma),
          R.unrolled_objective(*kept, p.w, p.alpha, p.T, p.gamma), rtol=1e-12)
    D = [np.full_like(x, 2.0) for x in p.W]                   # the Adam-aware step, too
    close(R.hypergradient(*args, p.w, p.alpha, p.T, p.gamma, precond=D),
          R.hypergradient(*kept, p.w, p.alpha, p.T, p.gamma, precond=D), rtol=1e-11)


@FAST
@given(masked_problems(), st.floats(1e-3, 1e3))
def test_which_rows_are_ignored_not_how_many_or_where(p, scale):
    """Ignored rows may hold anything (their logits scaled by any factor), be as many as they like
    (padding) and sit anywhere (the positions permuted): the losses and their gradients at the
    scored rows do not move. Would catch a loss that normalises by the padded length, or reads
    ignored logits through a softmax over positions."""
    z, y, w, T, a = p.z, p.y, p.w, p.T, p.alpha
    zf, yf = z.reshape(p.M, -1, p.V), y.reshape(-1)
    scaled = np.where((yf == -100)[None, :, None], scale * zf, zf)
    pad = p.rng.standard_normal((p.M, 5, p.V))
    padded, ypad = np.concatenate([zf, pad], axis=1), np.concatenate([yf, np.full(5, -100)])
    perm = p.rng.permutation(len(ypad))
    n = len(yf)
    base, gbase = R.wml_losses(zf, yf, w, a, T), R.wml_losses_grad(zf, yf, w, a, T)
    for zz, yy, where in [(scaled, yf, np.arange(n)), (padded, ypad, np.arange(n + 5)),
                          (padded[:, perm], ypad[perm], perm)]:
        close(R.wml_losses(zz, yy, w, a, T), base, rtol=1e-12)
        close(R.ensemble_loss(zz, yy, w), R.ensemble_loss(zf, yf, w), rtol=1e-12)
        close(R.kd_loss(zz[0], zz[-1], yy, a, T), R.kd_loss(zf[0], zf[-1], yf, a, T), rtol=1e-12)
        keep = yy != -100
        for g, gb in zip(R.wml_losses_grad(zz, yy, w, a, T), gbase):
            close(g[keep], gb[where[keep]], rtol=1e-12)      # row t here is row where[t] of the original
            assert np.all(g[~keep] == 0.0)


# ============================================================ mirror descent

@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from([1.0, 5.0, 1e4]),
       st.sampled_from([0.0, 0.25, 1.0, 10.0]))
def test_mirror_step(seed, M, gscale, eta):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(M))
    g = gscale * rng.standard_normal(M)
    new = R.mirror_step(w, g, eta)
    assert new.shape == (M,) and np.all(new >= 0) and np.all(np.isfinite(new))
    assert abs(new.sum() - 1) < 1e-12
    if eta * gscale <= 10:  # the closed form does not overflow here
        u = [w[i] * math.exp(-eta * g[i]) for i in range(M)]
        close(new, [x / sum(u) for x in u], rtol=1e-12)
    if eta == 0:
        close(new, w, rtol=1e-14)


def test_mirror_step_extremes():
    new = R.mirror_step([0.2, 0.3, 0.5], [1e4, -1e4, 0.0], 1.0)
    np.testing.assert_array_equal(new, [0.0, 1.0, 0.0])
    new = R.mirror_step([0.5, 0.5, 0.0], [1.0, 2.0, -50.0], 0.3)  # a zero weight stays zero
    assert new[2] == 0.0
    close(new[:2], np.exp([-0.3, -0.6]) / np.exp([-0.3, -0.6]).sum(), rtol=1e-14)


# ============================================================ validation: ValueError with a message

_rng = np.random.default_rng(4)
Z = _rng.standard_normal((3, 4, 5))
Y = np.array([1, 0, -100, 4])
OM = np.array([0.2, 0.3, 0.5])
LIN = dict(
    Xt=[_rng.standard_normal((4, 2)), _rng.standard_normal((4, 3))],
    Xv=[_rng.standard_normal((3, 2)), _rng.standard_normal((3, 3))],
    W=[_rng.standard_normal((2, 5)), _rng.standard_normal((3, 5))],
    yt=np.array([0, 1, -100, 4]), yv=np.array([2, 3, 1]), w=np.array([0.4, 0.6]),
)


def _hg(**kw):
    a = {**LIN, **kw}
    return R.hypergradient(a["Xt"], a["yt"], a["Xv"], a["yv"], a["W"], a["w"],
                           kw.get("alpha", 0.5), kw.get("T", 1.0), kw.get("gamma", 0.1))


def _nan(a, idx):
    a = np.array(a, dtype=float)
    a[idx] = np.nan
    return a


BAD = {
    # logits vs labels
    "labels shape": (lambda: R.cross_entropy(Z[0], Y[:3]), "shape mismatch"),
    "labels float": (lambda: R.cross_entropy(Z[0], Y.astype(float)), "integer"),
    "label >= V": (lambda: R.cross_entropy(Z[0], np.array([1, 5, 0, 0])), "out of range"),
    "label negative": (lambda: R.cross_entropy(Z[0], np.array([1, -1, 0, 0])), "out of range"),
    "all ignored": (lambda: R.cross_entropy(Z[0], np.full(4, -100)), r"n = 0"),
    "nan logits": (lambda: R.cross_entropy(_nan(Z[0], (1, 2)), Y), "non-finite"),
    "inf logits": (lambda: R.kl_div(Z[1], Z[0] * np.inf, Y), "non-finite"),
    "nan target logits": (lambda: R.kl_div(_nan(Z[1], (0, 0)), Z[0], Y), "non-finite"),
    "q vs z shape": (lambda: R.kl_div(Z[1][:, :4], Z[0], Y), "shape mismatch"),
    "T zero": (lambda: R.kl_div(Z[1], Z[0], Y, T=0.0), "T must be > 0"),
    "T negative": (lambda: R.wml_losses(Z, Y, OM, 0.5, T=-1.0), "T must be > 0"),
    "T nan": (lambda: R.kl_div_grad(Z[1], Z[0], Y, T=float("nan")), "must be finite"),
    "T overflow": (lambda: R.kl_div(Z[1] * 1e300, Z[0], Y, T=1e-300), "overflow"),
    # peers
    "peers vocab": (lambda: R.wml_losses([Z[0], Z[1][:, :4]], Y, [0.5, 0.5], 0.5), "peers disagree"),
    "peers tokens": (lambda: R.wml_losses_grad([Z[0], Z[1][:3]], Y, [0.5, 0.5], 0.5), "peers disagree"),
    "no peers": (lambda: R.ensemble_loss([], Y, []), "at least one peer"),
    "peers as one 2-D array": (lambda: R.wml_losses(Z[0], Y, OM, 0.5), r"\(M, n, V\) array"),
    "omega length": (lambda: R.wml_losses(Z, Y, [0.5, 0.5], 0.5), "length M = 3"),
    "omega negative": (lambda: R.ensemble_loss(Z, Y, [-0.2, 0.7, 0.5]), "negative"),
    "omega sum": (lambda: R.ensemble_loss_grad_omega(Z, Y, [0.2, 0.3, 0.4]), "sum to"),
    "omega nan": (lambda: R.ensemble_loss(Z, Y, [np.nan, 0.5, 0.5], check_simplex=False), "non-finite"),
    "omega length unchecked simplex": (lambda: R.ensemble_loss(Z, Y, [1.0], check_simplex=False), "length M = 3"),
    "alpha > 1": (lambda: R.wml_losses(Z, Y, OM, 1.5), r"alpha must lie in \[0, 1\]"),
    "alpha < 0": (lambda: R.wml_b_grads(Z, Y, -0.1), r"alpha must lie in \[0, 1\]"),
    "alpha bool": (lambda: R.wml_losses(Z, Y, OM, True), "bool"),
    # kd
    "alpha_kd": (lambda: R.kd_loss(Z[0], Z[1], Y, alpha_kd=2.0), r"alpha_kd must lie in \[0, 1\]"),
    "kd shapes": (lambda: R.kd_loss_grad(Z[0], Z[1][:3], Y), "shape mismatch"),
    "kd T": (lambda: R.kd_loss(Z[0], Z[1], Y, T=0.0), "T must be > 0"),
    # mirror
    "eta negative": (lambda: R.mirror_step(OM, [1.0, 2.0, 3.0], -0.1), "eta must be >= 0"),
    "eta inf": (lambda: R.mirror_step(OM, [1.0, 2.0, 3.0], np.inf), "eta must be finite"),
    "eta nan": (lambda: R.mirror_step(OM, [1.0, 2.0, 3.0], np.nan), "eta must be finite"),
    "mirror g length": (lambda: R.mirror_step(OM, [1.0, 2.0], 0.1), "length M = 3"),
    "mirror g nan": (lambda: R.mirror_step(OM, [1.0, np.nan, 0.0], 0.1), "non-finite"),
    "mirror omega": (lambda: R.mirror_step([0.5, 0.6], [1.0, 2.0], 0.1), "simplex"),
    "mirror overflow": (lambda: R.mirror_step(OM, [1e300, 0.0, 0.0], 1e10), "overflow"),
    # linear peers / hypergradient
    "X/W width": (lambda: _hg(Xt=[LIN["Xt"][0], LIN["Xt"][0]]), r"X_train\[1\] has width 2 but W\[1\] has 3"),
    "X count": (lambda: _hg(Xt=LIN["Xt"][:1]), "one input matrix per peer"),
    "X_val width": (lambda: _hg(Xv=[LIN["Xv"][1], LIN["Xv"][1]]), r"X_val\[0\] has width 3"),
    "X rows differ": (lambda: _hg(Xt=[LIN["Xt"][0], LIN["Xt"][1][:3]]), "token count"),
    "W vocab differ": (lambda: _hg(W=[LIN["W"][0], LIN["W"][1][:, :4]]), "vocabulary"),
    "W not 2-D": (lambda: _hg(W=[LIN["W"][0].ravel(), LIN["W"][1]]), "must be 2-D"),
    "y_train shape": (lambda: _hg(yt=LIN["yt"][:3]), "y_train has shape"),
    "y_val range": (lambda: _hg(yv=np.array([2, 3, 7])), "y_val out of range"),
    "y_val all ignored": (lambda: _hg(yv=np.full(3, -100)), r"n = 0"),
    "gamma negative": (lambda: _hg(gamma=-0.5), "gamma must be >= 0"),
    "hg omega length": (lambda: _hg(w=np.array([1.0])), "length M = 2"),
    "hg omega simplex": (lambda: _hg(w=np.array([0.5, 0.6])), "simplex"),
    "hg alpha": (lambda: _hg(alpha=7.0), "alpha"),
    "hg T": (lambda: _hg(T=0.0), "T must be > 0"),
    "X nan": (lambda: _hg(Xt=[_nan(LIN["Xt"][0], (0, 0)), LIN["Xt"][1]]), "non-finite"),
    "unrolled gamma nan": (lambda: R.unrolled_objective(LIN["Xt"], LIN["yt"], LIN["Xv"], LIN["yv"], LIN["W"],
                                                        LIN["w"], 0.5, 1.0, float("nan")), "gamma must be finite"),
    "inner grad omega": (lambda: R.linear_inner_grad(LIN["Xt"], LIN["yt"], LIN["W"], [0.5, 0.5, 0.0], 0.5), "length M = 2"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_value_error(name):
    fn, pattern = BAD[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=pattern):
            fn()


def test_public_api():
    expected = {
        "cross_entropy", "cross_entropy_grad", "kl_div", "kl_div_grad", "wml_losses", "wml_losses_grad",
        "ensemble_loss", "ensemble_loss_grad_omega", "kd_loss", "kd_loss_grad", "mirror_step",
        "unrolled_objective", "hypergradient", "linear_inner_grad",
    }
    assert expected <= set(R.__all__)
    assert all(callable(getattr(R, name)) for name in expected)
    # the oracle is pure NumPy/SciPy: no module of it imports torch
    from pathlib import Path

    for src in Path(R.__file__).parent.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+torch", src.read_text(), re.M), src.name


@settings(max_examples=200, deadline=None)
@given(step=st.integers(0, 400), warmup=st.integers(0, 50), decay=st.integers(0, 300),
       peak=st.floats(1e-4, 10.0), frac=st.floats(0.0, 1.0))
def test_warmup_cosine_agrees_with_the_trainers_schedule(step, warmup, decay, peak, frac):
    """Two implementations written apart (the oracle's and the one the trainer and updaters use):
    a wrong warm-up, a shifted cosine or a missing floor in either makes them disagree."""
    from wml_framework.training.schedules import warmup_cosine as used

    floor = peak * frac
    assert R.warmup_cosine(step, peak, floor, warmup, decay) == pytest.approx(used(step, peak, floor, warmup, decay),
                                                                               rel=1e-12, abs=1e-15)


def test_warmup_cosine_landmarks_and_bad_input():
    assert R.warmup_cosine(0, 1.0, 0.1, 3, 10) == pytest.approx(0.25)       # (s+1)/(w+1) of the peak
    assert R.warmup_cosine(3, 1.0, 0.1, 3, 10) == pytest.approx(1.0)        # the peak when the warm-up ends
    assert R.warmup_cosine(10, 1.0, 0.1, 3, 10) == pytest.approx(0.1)       # the floor at decay_iters
    assert R.warmup_cosine(6.5, 1.0, 0.0, 3, 10) == pytest.approx(0.5)      # half way down the cosine
    for bad in [dict(step=-1), dict(peak=float("nan")), dict(floor=2.0)]:
        args = dict(step=1, peak=1.0, floor=0.1, warmup=2, decay_iters=10) | bad
        with pytest.raises(ValueError):
            R.warmup_cosine(**args)
