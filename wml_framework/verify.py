"""Numerical checks of every registered loss and updater, built-in or third-party (``wml verify``).

Why: a loss or updater that is subtly wrong (a sign, a missing stop-gradient, a mean over
sequences instead of tokens) still trains; only a check against finite differences and against
the float64 oracle ``wml_reference`` finds it. Every plugin gets the generic checks (derivatives by
central differences in float64, invariants, finite results on extreme logits); the built-ins also
get compared with the reference where it computes the same quantity. All problems are random,
with M from 1 to 6 peers, ignored labels and a temperature ≠ 1.

``run_checks(host) -> list[CheckResult]`` is the API; the command only formats it.
"""

from __future__ import annotations

import inspect
import math
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .api import IGNORE_INDEX, Batch, OuterContext
from .plugins import Entry, PluginHost, get_host

#: tolerances (relative errors): against the reference, against finite differences, invariants
TOL_REFERENCE = 1e-8
TOL_FD = 1e-6
TOL_EXACT = 1e-12
FD_STEP = 1e-5
REL_FLOOR = 1e-6
FD_FLOOR = 1e-3
PEER_COUNTS = (1, 2, 3, 4, 5, 6)


@dataclass
class CheckResult:
    """One line of the verification table."""

    kind: str
    name: str
    plugin: str
    check: str
    max_rel_error: Optional[float]
    tolerance: Optional[float]
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Failed(Exception):
    """A check's own verdict of failure (as opposed to a plugin raising)."""


# ----------------------------------------------------------------------------- random problems

def _config(num_peers: int, **extra):
    from . import config

    values = dict(num_peers=num_peers, loss_alpha=0.35, temperature=1.7, kd_alpha=0.6,
                  kd_temperature=2.5, fixed_omega=[float(k + 1) for k in range(num_peers)],
                  omega_warmup_iters=2, omega_decay_iters=20)
    values.update(extra)
    return config.from_dict(values, check_plugins=False)


@dataclass
class _LossProblem:
    logits: list
    labels: Tensor
    omega: Tensor
    teacher: Tensor


def _simplex(M: int, g: torch.Generator) -> Tensor:
    w = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    return w / w.sum()


def _labels(shape: tuple, V: int, g: torch.Generator) -> Tensor:
    y = torch.randint(0, V, shape, generator=g)
    flat = y.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 4)]] = IGNORE_INDEX
    flat[0] = int(torch.randint(0, V, (1,), generator=g))   # never all ignored
    return y


def _loss_problems(seed: int) -> Iterator[_LossProblem]:
    g = torch.Generator().manual_seed(seed)
    for M in PEER_COUNTS:
        B, T, V = 2, 3, 5 + M
        logits = [2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64) for _ in range(M)]
        teacher = 2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
        yield _LossProblem(logits, _labels((B, T), V, g), _simplex(M, g), teacher)


def _call_loss(loss, logits, p: _LossProblem, omega: Tensor, teacher=None):
    teacher = p.teacher if teacher is None else teacher
    return loss(logits, p.labels, omega, teacher_logits=teacher if loss.needs_teacher else None)


def _rel(a, b) -> float:
    """max |a − b| / max |b|; below REL_FLOOR the scale is REL_FLOOR (an exact 0 has no relative error)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, REL_FLOOR)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def _fd_error(analytic: float, fd: float) -> float:
    """Relative error of a directional derivative against central differences (floor FD_FLOOR:
    differences carry ~1e-11 of rounding, so derivatives that vanish are compared absolutely)."""
    return abs(analytic - fd) / max(abs(fd), abs(analytic), FD_FLOOR)


def _grad(out: Tensor, inputs: list, **kw) -> list[Tensor]:
    if not out.requires_grad:          # the output does not depend on any input (e.g. ω unused)
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(out, inputs, allow_unused=True, **kw)
    return [torch.zeros_like(x) if gi is None else gi for gi, x in zip(gs, inputs)]


# ----------------------------------------------------------------------------- generic loss checks

def _loss_result_shapes(loss, p: _LossProblem) -> float:
    M = len(p.logits)
    res = _call_loss(loss, p.logits, p, p.omega)
    for field in ("per_peer", "ce", "kl"):
        t = getattr(res, field)
        if tuple(t.shape) != (M,):
            raise _Failed(f"{field} has shape {tuple(t.shape)}, expected ({M},)")
        if not bool(torch.isfinite(t).all()):
            raise _Failed(f"{field} is not finite: {t.tolist()}")
    if res.total.dim() != 0:
        raise _Failed(f"total has shape {tuple(res.total.shape)}, expected a scalar")
    return _rel(float(res.total), float(res.per_peer.sum()))


def _loss_grad_logits_fd(loss, p: _LossProblem, omega_requires_grad: bool, g: torch.Generator) -> float:
    """∂L_i/∂z_i by autograd vs central differences of L_i along random directions."""
    worst = 0.0
    omega = p.omega.clone().requires_grad_(omega_requires_grad)
    for i in range(len(p.logits)):
        zs = [z.clone().requires_grad_(k == i) for k, z in enumerate(p.logits)]
        with torch.enable_grad():
            (gi,) = _grad(_call_loss(loss, zs, p, omega).per_peer[i], [zs[i]])
        for _ in range(2):
            u = torch.randn(zs[i].shape, generator=g, dtype=torch.float64)

            def f(s: float) -> float:
                moved = [z.detach() + (s * u if k == i else 0.0) for k, z in enumerate(zs)]
                with torch.no_grad():
                    return float(_call_loss(loss, moved, p, p.omega).per_peer[i])

            fd = (f(FD_STEP) - f(-FD_STEP)) / (2 * FD_STEP)
            an = float((gi * u).sum())
            worst = max(worst, _fd_error(an, fd))
    return worst


def _loss_stop_gradient(loss, p: _LossProblem) -> float:
    """Targets are stop-gradient: ∂(Σ_k L_k)/∂z_i equals ∂L_i/∂z_i. (Each gradient from a fresh
    call: a loss may legitimately refuse a second backward through one graph.)"""
    def fresh():
        zs = [z.clone().requires_grad_() for z in p.logits]
        return zs, _call_loss(loss, zs, p, p.omega)

    zs, res = fresh()
    total = _grad(res.total, zs)
    worst = 0.0
    for i in range(len(zs)):
        zs_i, res_i = fresh()
        (own,) = _grad(res_i.per_peer[i], [zs_i[i]])
        worst = max(worst, _rel(total[i].numpy(), own.numpy()))
    return worst


def _loss_grad_omega_fd(loss, p: _LossProblem, g: torch.Generator) -> float:
    """∂(Σ_i L_i)/∂ω by autograd vs central differences (ω moved off the simplex)."""
    w = p.omega.clone().requires_grad_()
    (gw,) = _grad(_call_loss(loss, p.logits, p, w).total, [w])
    worst = 0.0
    for _ in range(3):
        u = torch.randn(w.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (float(_call_loss(loss, p.logits, p, p.omega + FD_STEP * u).total)
                  - float(_call_loss(loss, p.logits, p, p.omega - FD_STEP * u).total)) / (2 * FD_STEP)
        an = float((gw * u).sum())
        worst = max(worst, _fd_error(an, fd))
    return worst


def _mixed(loss, p: _LossProblem, omega: Tensor, u: list) -> Tensor:
    """h(ω) = Σ_i ⟨∂L/∂z_i, u_i⟩, the quantity whose ω-gradient the exact hypergradient needs."""
    zs = [z.clone().requires_grad_() for z in p.logits]
    dz = _grad(_call_loss(loss, zs, p, omega).total, zs, create_graph=True)
    return sum(((d * ui).sum() for d, ui in zip(dz, u)), torch.zeros((), dtype=torch.float64))


def _loss_mixed_fd(loss, p: _LossProblem, g: torch.Generator) -> float:
    u = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in p.logits]
    w = p.omega.clone().requires_grad_()
    h = _mixed(loss, p, w, u)
    (gw,) = _grad(h, [w]) if h.requires_grad else (torch.zeros_like(w),)
    worst = 0.0
    for _ in range(2):
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        fd = (float(_mixed(loss, p, p.omega + FD_STEP * d, u).detach())
              - float(_mixed(loss, p, p.omega - FD_STEP * d, u).detach())) / (2 * FD_STEP)
        worst = max(worst, _fd_error(float((gw * d).sum()), fd))
    return worst


def _loss_mixed_closed_form(loss, p: _LossProblem, g: torch.Generator) -> float:
    """A loss's own ``mixed_omega_grad`` (the hypergradient's fast path) against the double backward."""
    u = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in p.logits]
    w = p.omega.clone().requires_grad_()
    h = _mixed(loss, p, w, u)
    (generic,) = _grad(h, [w]) if h.requires_grad else (torch.zeros_like(w),)
    teacher = p.teacher if loss.needs_teacher else None
    results = [loss.mixed_omega_grad(p.logits, p.labels, p.omega, u, teacher_logits=teacher)]
    if "logit_grads" in inspect.signature(loss.mixed_omega_grad).parameters:
        zs = [z.clone().requires_grad_() for z in p.logits]
        grads = _grad(_call_loss(loss, zs, p, p.omega).total, zs)
        results.append(loss.mixed_omega_grad(p.logits, p.labels, p.omega, u, teacher_logits=teacher,
                                             logit_grads=grads))
        if getattr(loss, "mixed_from_logit_grads", False):     # it promises to need no logits
            results.append(loss.mixed_omega_grad(None, p.labels, p.omega, u, teacher_logits=teacher,
                                                 logit_grads=grads))
    for fast in results:
        if tuple(fast.shape) != (len(p.logits),):
            raise _Failed(f"mixed_omega_grad returned shape {tuple(fast.shape)}, expected ({len(p.logits)},)")
    return max(_rel(_np(fast), _np(generic)) for fast in results)


def _loss_logit_grads(loss, p: _LossProblem) -> float:
    """A loss's own ``logit_grads`` (the hypergradient's step-1 fast path) against autograd."""
    zs = [z.clone().requires_grad_() for z in p.logits]
    auto = _grad(_call_loss(loss, zs, p, p.omega).total, zs)
    fast = loss.logit_grads(p.logits, p.labels, p.omega, teacher_logits=p.teacher if loss.needs_teacher else None)
    if len(fast) != len(zs) or any(tuple(f.shape) != tuple(z.shape) for f, z in zip(fast, zs)):
        raise _Failed("logit_grads must return one tensor per peer, shaped like its logits")
    return max(_rel(_np(f), _np(a)) for f, a in zip(fast, auto))


def _loss_ignored_positions(loss, p: _LossProblem) -> float:
    """Logits at ignored positions change nothing and receive no gradient."""
    mask = (p.labels == IGNORE_INDEX).unsqueeze(-1)
    garbage = [torch.where(mask, 50.0 * torch.randn_like(z), z).requires_grad_() for z in p.logits]
    teacher = torch.where(mask, -30.0 * torch.ones_like(p.teacher), p.teacher)
    base = _call_loss(loss, p.logits, p, p.omega).per_peer.detach()
    res = _call_loss(loss, garbage, p, p.omega, teacher=teacher)
    grads = _grad(res.total, garbage)
    leak = max(float(gz.masked_select(mask).abs().max()) if bool(mask.any()) else 0.0 for gz in grads)
    if leak != 0.0:
        raise _Failed(f"ignored positions receive gradient (max |∂L/∂z| = {leak:.3g})")
    return _rel(res.per_peer.detach().numpy(), base.numpy())


def _loss_token_mean(loss, p: _LossProblem) -> float:
    """A token mean changes neither when the batch is repeated (a sum would) nor when its (B, T)
    tokens are laid out as one long sequence (a mean over sequences would)."""
    a = _call_loss(loss, p.logits, p, p.omega).per_peer.detach()
    twice = [torch.cat([z, z], 0) for z in p.logits]
    q = _LossProblem(twice, torch.cat([p.labels, p.labels], 0), p.omega, torch.cat([p.teacher, p.teacher], 0))
    b = _call_loss(loss, twice, q, p.omega).per_peer.detach()
    V = p.logits[0].shape[-1]
    flat = [z.reshape(1, -1, V) for z in p.logits]
    r = _LossProblem(flat, p.labels.reshape(1, -1), p.omega, p.teacher.reshape(1, -1, V))
    c = _call_loss(loss, flat, r, p.omega).per_peer.detach()
    return max(_rel(b.numpy(), a.numpy()), _rel(c.numpy(), a.numpy()))


def _loss_extreme(loss, dtype: torch.dtype, seed: int) -> None:
    """Logits of ±1e4 in a narrow dtype give finite losses and finite gradients."""
    g = torch.Generator().manual_seed(seed)
    M, B, T, V = 3, 2, 4, 11
    logits = [(1e4 * torch.randn(B, T, V, generator=g)).clamp(-1e4, 1e4).to(dtype) for _ in range(M)]
    teacher = (1e4 * torch.randn(B, T, V, generator=g)).clamp(-1e4, 1e4).to(dtype)
    labels = _labels((B, T), V, g)
    for omega_grad in (False, True):
        zs = [z.clone().requires_grad_() for z in logits]
        w = _simplex(M, g).requires_grad_(omega_grad)
        res = loss(zs, labels, w, teacher_logits=teacher if loss.needs_teacher else None)
        grads = _grad(res.total, zs + ([w] if omega_grad else []))
        bad = [name for name, t in (("total", res.total), ("ce", res.ce), ("kl", res.kl))
               if not bool(torch.isfinite(t).all())]
        bad += [f"grad[{k}]" for k, gr in enumerate(grads) if not bool(torch.isfinite(gr).all())]
        if bad:
            raise _Failed(f"non-finite {', '.join(bad)} ({dtype}, ω requires grad: {omega_grad})")


# ----------------------------------------------------------------------------- reference checks (built-ins)

def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _ref_student_grads(loss, p: _LossProblem, omega_requires_grad: bool) -> list[np.ndarray]:
    zs = [z.clone().requires_grad_() for z in p.logits]
    w = p.omega.clone().requires_grad_(omega_requires_grad)
    return [_np(gz) for gz in _grad(_call_loss(loss, zs, p, w).total, zs)]


def _wml_reference_checks(loss, p: _LossProblem, cfg, R) -> dict[str, float]:
    zs, y, w = [_np(z) for z in p.logits], p.labels.numpy(), _np(p.omega)
    a, T = cfg.loss_alpha, cfg.temperature
    res = _call_loss(loss, p.logits, p, p.omega)
    M = len(zs)
    kl_ref = [sum(w[j] * R.kl_div(zs[j], zs[i], y, T) for j in range(M) if j != i) for i in range(M)]
    grads_ref = R.wml_losses_grad(zs, y, w, a, T)
    wv = p.omega.clone().requires_grad_()
    (gw,) = _grad(_call_loss(loss, p.logits, p, wv).total, [wv])
    gw_ref = [a * sum(R.kl_div(zs[j], zs[i], y, T) for i in range(M) if i != j) for j in range(M)]
    return {
        "values vs reference": _rel(_np(res.per_peer), R.wml_losses(zs, y, w, a, T)),
        "ce part vs reference": _rel(_np(res.ce), [R.cross_entropy(z, y) for z in zs]),
        "kl part vs reference": _rel(_np(res.kl), kl_ref),
        "grad logits vs reference (ω const)": max(_rel(g, r) for g, r in zip(_ref_student_grads(loss, p, False), grads_ref)),
        "grad logits vs reference (ω grad)": max(_rel(g, r) for g, r in zip(_ref_student_grads(loss, p, True), grads_ref)),
        "grad omega vs reference": _rel(_np(gw), gw_ref),
    }


def _kd_reference_checks(loss, p: _LossProblem, cfg, R) -> dict[str, float]:
    zs, y, q = [_np(z) for z in p.logits], p.labels.numpy(), _np(p.teacher)
    a, T = cfg.kd_alpha, cfg.kd_temperature
    res = _call_loss(loss, p.logits, p, p.omega)
    grads = _ref_student_grads(loss, p, False)
    return {
        "values vs reference": _rel(_np(res.per_peer), [R.kd_loss(z, q, y, a, T) for z in zs]),
        "ce part vs reference": _rel(_np(res.ce), [R.cross_entropy(z, y) for z in zs]),
        "kl part vs reference": _rel(_np(res.kl), [R.kl_div(q, z, y, T) for z in zs]),
        "grad logits vs reference": max(_rel(g, R.kd_loss_grad(z, q, y, a, T)) for g, z in zip(grads, zs)),
    }


def _ce_reference_checks(loss, p: _LossProblem, cfg, R) -> dict[str, float]:
    zs, y = [_np(z) for z in p.logits], p.labels.numpy()
    res = _call_loss(loss, p.logits, p, p.omega)
    grads = _ref_student_grads(loss, p, False)
    return {
        "values vs reference": _rel(_np(res.per_peer), [R.cross_entropy(z, y) for z in zs]),
        "grad logits vs reference": max(_rel(g, R.cross_entropy_grad(z, y)) for g, z in zip(grads, zs)),
    }


# ----------------------------------------------------------------------------- updater problems and checks

@dataclass
class _OuterProblem:
    ctx: OuterContext
    X_train: list
    X_val: list
    cfg: object


def linear_peers(widths: Sequence[int], vocab: int, scale: float, g: torch.Generator) -> list:
    """Linear-softmax peers z_i = X_i W_i as bias-free float64 ``nn.Linear`` modules of different
    input widths: the peers for which ``wml_reference.hypergradient`` is exact."""
    peers = []
    for d in widths:
        lin = nn.Linear(d, vocab, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(scale * torch.randn(vocab, d, generator=g, dtype=torch.float64))
        peers.append(lin)
    return peers


def _outer_problem(M: int, loss_factory: Callable, g: torch.Generator, outer_step: int = 3,
                   **cfg_extra) -> _OuterProblem:
    """M linear peers z_i = X_i W_i (nn.Linear, no bias, different input widths), float64."""
    cfg = _config(M, **cfg_extra)
    n_train, n_val, V = 7, 6, 5
    widths = [2 + (k % 3) for k in range(M)]
    peers = linear_peers(widths, V, 0.8, g)
    X_train = [torch.randn(n_train, d, generator=g, dtype=torch.float64) for d in widths]
    X_val = [torch.randn(n_val, d, generator=g, dtype=torch.float64) for d in widths]
    ctx = OuterContext(peers=peers, loss=loss_factory(cfg), omega=_simplex(M, g),
                       train=Batch(X_train, _labels((n_train,), V, g)), val=Batch(X_val, _labels((n_val,), V, g)),
                       inner_lr=0.6, outer_step=outer_step)
    return _OuterProblem(ctx, X_train, X_val, cfg)


def _check_simplex(omega, M: int, who: str) -> float:
    if not isinstance(omega, Tensor):
        raise _Failed(f"{who} is a {type(omega).__name__}, not a tensor")
    if tuple(omega.shape) != (M,):
        raise _Failed(f"{who} has shape {tuple(omega.shape)}, expected ({M},)")
    w = omega.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise _Failed(f"{who} is not finite: {w.tolist()}")
    if bool((w < 0).any()):
        raise _Failed(f"{who} has negative entries: {w.tolist()}")
    return abs(float(w.sum()) - 1.0)


def _snapshot(peers) -> list:
    """Parameters, their .grad (None or a copy) and every module's train/eval flag."""
    return [([p.detach().clone() for p in m.parameters()],
             [x.training for x in m.modules()],
             [None if p.grad is None else p.grad.detach().clone() for p in m.parameters()]) for m in peers]


def _problems(loss_factory: Callable, seed: int) -> Iterator[tuple[int, _OuterProblem]]:
    g = torch.Generator().manual_seed(seed)
    for M in PEER_COUNTS:
        yield M, _outer_problem(M, loss_factory, g)


def _upd_initial(factory, loss_factory, seed) -> float:
    return max(_check_simplex(factory(prob.cfg, M).initial_omega(), M, "initial_omega()")
               for M, prob in _problems(loss_factory, seed))


def _upd_step_simplex(factory, loss_factory, seed) -> float:
    return max(_check_simplex(factory(prob.cfg, M).step(prob.ctx).omega, M, "step().omega")
               for M, prob in _problems(loss_factory, seed))


def _upd_deterministic(factory, loss_factory, seed) -> float:
    return max(_rel(_np(factory(prob.cfg, M).step(prob.ctx).omega), _np(factory(prob.cfg, M).step(prob.ctx).omega))
               for M, prob in _problems(loss_factory, seed))


def _upd_peers_untouched(factory, loss_factory, seed) -> float:
    worst = 0.0
    for M, prob in _problems(loss_factory, seed):
        prob.ctx.peers[0].eval()                    # a mix of modes, which must come back as it was
        before = _snapshot(prob.ctx.peers)
        factory(prob.cfg, M).step(prob.ctx)
        for (pb, mb, gb), (pa, ma, ga) in zip(before, _snapshot(prob.ctx.peers)):
            if mb != ma:
                raise _Failed("step() changed the peers' train/eval modes")
            if any((x is None) != (y_ is None) or (x is not None and not torch.equal(x, y_)) for x, y_ in zip(gb, ga)):
                raise _Failed("step() changed the peers' .grad")
            worst = max([worst] + [float((x - y_).abs().max()) for x, y_ in zip(pb, pa)])
    return worst


def _upd_state_round_trip(factory, loss_factory, seed) -> float:
    worst = 0.0
    for M, prob in _problems(loss_factory, seed):
        upd = factory(prob.cfg, M)
        upd.step(prob.ctx)
        fresh = factory(prob.cfg, M)
        fresh.load_state_dict(upd.state_dict())
        worst = max(worst, _rel(_np(fresh.step(prob.ctx).omega), _np(upd.step(prob.ctx).omega)))
    return worst


GENERIC_UPDATER_CHECKS = {
    "initial ω on simplex": _upd_initial,
    "step ω on simplex": _upd_step_simplex,
    "deterministic": _upd_deterministic,
    "peers untouched": _upd_peers_untouched,
    "state round-trip": _upd_state_round_trip,
}


def _mirror_reference(factory: Callable, loss_factory: Callable, seed: int, R) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    worst = {"hypergradient vs reference": 0.0, "hypergradient vs finite differences": 0.0,
             "first-order vs reference": 0.0, "step vs reference mirror_step": 0.0}
    for M in PEER_COUNTS:
        prob = _outer_problem(M, loss_factory, g)
        ctx, cfg = prob.ctx, prob.cfg
        W = [_np(p.weight).T.copy() for p in ctx.peers]
        args = ([_np(x) for x in prob.X_train], ctx.train.labels.numpy(), [_np(x) for x in prob.X_val],
                ctx.val.labels.numpy(), W)
        w = _np(ctx.omega)
        res = factory(cfg, M).step(ctx)
        if res.info.get("hypergradient") != "exact":
            raise _Failed(f"info['hypergradient'] is {res.info.get('hypergradient')!r}, expected 'exact'")
        ref = R.hypergradient(*args, w, cfg.loss_alpha, cfg.temperature, ctx.inner_lr)
        worst["hypergradient vs reference"] = max(worst["hypergradient vs reference"], _rel(_np(res.grad), ref))
        for _ in range(2):
            d = torch.randn(M, generator=g, dtype=torch.float64).numpy()
            F = [R.unrolled_objective(*args, w + s * FD_STEP * d, cfg.loss_alpha, cfg.temperature, ctx.inner_lr,
                                      check_simplex=False) for s in (1, -1)]
            fd, an = (F[0] - F[1]) / (2 * FD_STEP), float(np.dot(_np(res.grad), d))
            worst["hypergradient vs finite differences"] = max(worst["hypergradient vs finite differences"],
                                                              _fd_error(an, fd))
        expected = R.mirror_step(w, _np(res.grad), res.eta)
        worst["step vs reference mirror_step"] = max(worst["step vs reference mirror_step"], _rel(_np(res.omega), expected))
        fo = factory(_config(M, hypergradient="first_order"), M).step(ctx)
        if fo.info.get("hypergradient") != "first_order":
            raise _Failed(f"first-order run reports info['hypergradient'] = {fo.info.get('hypergradient')!r}")
        ref_fo = R.hypergradient_first_order(args[2], args[3], W, w)
        worst["first-order vs reference"] = max(worst["first-order vs reference"], _rel(_np(fo.grad), ref_fo))
    worst["hypergradient vs finite differences"] = (worst["hypergradient vs finite differences"], TOL_FD)
    return worst


def _constant_updater(factory: Callable, loss_factory: Callable, seed: int, expected: Callable) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for M in PEER_COUNTS:
        prob = _outer_problem(M, loss_factory, g)
        upd = factory(prob.cfg, M)
        want = expected(prob.cfg, M)
        worst = max(worst, _rel(_np(upd.initial_omega()), want))
        for step in range(3):
            prob.ctx.outer_step = step
            worst = max(worst, _rel(_np(upd.step(prob.ctx).omega), want))
    return {"ω invariant": worst}


# ----------------------------------------------------------------------------- the runner

@contextmanager
def _one_thread() -> Iterator[None]:
    """The problems are tiny: thread start-up costs more than it saves (and thrashes a busy host)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Recorder:
    def __init__(self, entry: Entry):
        self.entry, self.results = entry, []

    def add(self, check: str, error: Optional[float], tol: Optional[float], detail: str = "") -> None:
        ok = error is None or (math.isfinite(error) and error <= tol)
        if error is not None and not ok and not detail:
            detail = f"error {error:.3g} > tolerance {tol:g}"
        self.results.append(CheckResult(self.entry.kind, self.entry.name, self.entry.plugin, check,
                                        error, tol, ok, detail))

    def fail(self, check: str, tol: Optional[float], exc: BaseException) -> None:
        if isinstance(exc, _Failed):
            detail = str(exc)
        else:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            detail = f"{type(exc).__name__}: {exc} (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
        self.results.append(CheckResult(self.entry.kind, self.entry.name, self.entry.plugin, check,
                                        None, tol, False, detail))

    def run(self, check: str, tol: Optional[float], fn: Callable[[], Optional[float]]) -> None:
        try:
            self.add(check, fn(), tol)
        except Exception as exc:  # noqa: BLE001 - a raising plugin is a failed check, named
            self.fail(check, tol, exc)

    def run_many(self, group: str, tol: float, fn: Callable[[], dict]) -> None:
        """Several checks computed together; if the computation raises, one failed row for the group."""
        try:
            for check, err in fn().items():
                err, check_tol = err if isinstance(err, tuple) else (err, tol)
                self.add(check, err, check_tol)
        except Exception as exc:  # noqa: BLE001
            self.fail(group, tol, exc)


def _over_problems(loss, seed: int, fn: Callable[[object, _LossProblem], float]) -> float:
    return max(fn(loss, p) for p in _loss_problems(seed))


def _check_loss(entry: Entry, seed: int, R) -> list[CheckResult]:
    rec = _Recorder(entry)
    try:
        loss = entry.obj(_config(3))
    except Exception as exc:  # noqa: BLE001
        rec.fail("create", None, exc)
        return rec.results
    g = torch.Generator().manual_seed(seed + 1)
    rec.run("result shapes, total = Σ per_peer", TOL_EXACT, lambda: _over_problems(loss, seed, _loss_result_shapes))
    rec.run("grad logits vs finite differences (ω const)", TOL_FD,
            lambda: _over_problems(loss, seed, lambda l, p: _loss_grad_logits_fd(l, p, False, g)))
    rec.run("grad logits vs finite differences (ω grad)", TOL_FD,
            lambda: _over_problems(loss, seed, lambda l, p: _loss_grad_logits_fd(l, p, True, g)))
    rec.run("stop-gradient on targets", TOL_EXACT, lambda: _over_problems(loss, seed, _loss_stop_gradient))
    rec.run("grad omega vs finite differences", TOL_FD,
            lambda: _over_problems(loss, seed, lambda l, p: _loss_grad_omega_fd(l, p, g)))
    rec.run("∂²/∂ω∂z (hypergradient) vs finite differences", TOL_FD,
            lambda: _over_problems(loss, seed, lambda l, p: _loss_mixed_fd(l, p, g)))
    if callable(getattr(loss, "logit_grads", None)):
        rec.run("logit_grads vs autograd", TOL_REFERENCE, lambda: _over_problems(loss, seed, _loss_logit_grads))
    if callable(getattr(loss, "mixed_omega_grad", None)):
        def both_temperatures() -> float:        # closed forms often special-case T = 1
            unit = entry.obj(_config(3, temperature=1.0, kd_temperature=1.0))
            return max(_over_problems(l, seed, lambda l_, p: _loss_mixed_closed_form(l_, p, g)) for l in (loss, unit))

        rec.run("mixed_omega_grad vs double backward (T = 1, T ≠ 1)", TOL_REFERENCE, both_temperatures)
    rec.run("ignored labels: no effect, no gradient", TOL_EXACT, lambda: _over_problems(loss, seed, _loss_ignored_positions))
    rec.run("token mean (repeated, reshaped batch)", TOL_EXACT, lambda: _over_problems(loss, seed, _loss_token_mean))
    rec.run("finite on ±1e4 logits (float32)", None, lambda: _loss_extreme(loss, torch.float32, seed))
    rec.run("finite on ±1e4 logits (bfloat16)", None, lambda: _loss_extreme(loss, torch.bfloat16, seed))
    specific = _reference_loss_checks().get(entry.obj)
    if specific is not None and R is not None:
        cfg = _config(3)
        worst: dict[str, float] = {}

        def compare() -> dict:
            for p in _loss_problems(seed):
                for k, v in specific(loss, p, cfg, R).items():
                    worst[k] = max(worst.get(k, 0.0), v)
            return worst

        rec.run_many("reference checks", TOL_REFERENCE, compare)
    return rec.results


def _check_updater(entry: Entry, seed: int, R, loss_factory: Callable) -> list[CheckResult]:
    rec = _Recorder(entry)
    for check, fn in GENERIC_UPDATER_CHECKS.items():
        rec.run(check, TOL_EXACT, lambda fn=fn: fn(entry.obj, loss_factory, seed))
    specific = _reference_updater_checks().get(entry.obj)
    if specific is not None:
        kind, fn = specific
        if kind == "mirror" and R is not None:
            rec.run_many("reference checks", TOL_REFERENCE, lambda: fn(entry.obj, loss_factory, seed, R))
        elif kind == "constant":
            rec.run_many("ω invariant", TOL_EXACT, lambda: _constant_updater(entry.obj, loss_factory, seed, fn))
    return rec.results


def _reference_loss_checks() -> dict:
    from wml_plugins import losses

    return {losses.make_wml_loss: _wml_reference_checks, losses.make_kd_loss: _kd_reference_checks,
            losses.make_ce_loss: _ce_reference_checks}


def _reference_updater_checks() -> dict:
    from wml_plugins import updaters

    def uniform(cfg, M):
        return np.full(M, 1.0 / M)

    def fixed(cfg, M):
        w = np.asarray(cfg.fixed_omega, dtype=np.float64)
        return w / w.sum()

    return {updaters.make_mirror: ("mirror", _mirror_reference), updaters.make_uniform: ("constant", uniform),
            updaters.make_fixed: ("constant", fixed)}


def _reference_module():
    try:
        import wml_reference as R

        return R if hasattr(R, "hypergradient") else None
    except ImportError:
        return None


def run_checks(host: Optional[PluginHost] = None, *, seed: int = 0,
               names: Optional[list[str]] = None) -> list[CheckResult]:
    """Check every registered loss and updater (or only those in ``names``); one result per check.

    Updaters are exercised with the registered ``wml`` loss on linear peers.
    """
    host = host or get_host()
    R = _reference_module()
    results: list[CheckResult] = []
    with _one_thread(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for entry in host.entries("loss"):
            if names is None or entry.name in names:
                results.extend(_check_loss(entry, seed, R))
        loss_factory = host.get("loss", "wml").obj if "wml" in host.names("loss") else None
        for entry in host.entries("updater"):
            if names is None or entry.name in names:
                if loss_factory is None:
                    results.append(CheckResult(entry.kind, entry.name, entry.plugin, "driven by the 'wml' loss",
                                               None, None, False, "no loss named 'wml' is registered"))
                else:
                    results.extend(_check_updater(entry, seed, R, loss_factory))
    if R is None:
        results.append(CheckResult("reference", "wml_reference", "wml_reference", "importable", None, None,
                                   False, "wml_reference could not be imported; reference checks skipped"))
    return results


def format_table(results: list[CheckResult]) -> str:
    """A fixed-width table: plugin, check, max relative error, tolerance, result."""
    rows = [("plugin", "check", "max rel error", "tolerance", "result")]
    for r in results:
        err = "-" if r.max_rel_error is None else f"{r.max_rel_error:.2e}"
        tol = "-" if r.tolerance is None else f"{r.tolerance:.0e}"
        verdict = "pass" if r.passed else f"FAIL: {r.detail}"
        rows.append((f"{r.kind}:{r.name}", r.check, err, tol, verdict))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join(cell.ljust(widths[k]) for k, cell in enumerate(row[:4])) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
