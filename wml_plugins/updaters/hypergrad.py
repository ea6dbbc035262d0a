"""The exact hypergradient of method.md §4 for any list of ``nn.Module`` peers.

F(ω) = L_2(θ'(ω), ω) with θ'(ω) = θ − γ ∇_θ L_1(θ, ω) (one virtual inner SGD step), and

    g_j = ∂L_2/∂ω_j (θ', ω) − γ ⟨∇_θ L_2(θ', ω), ∂/∂ω_j ∇_θ L_1(θ, ω)⟩.

Why it costs no M backward passes: L_1 depends on θ only through the logits (the targets are
stop-gradient), so ∇_θ L_1 = Σ_i J_iᵀ u_i with u_i = ∂L_1/∂z_i and, with v = ∇_θ L_2(θ'),

    ⟨v, ∂/∂ω_j ∇_θ L_1⟩ = ∂/∂ω_j Σ_i ⟨u_i(ω), ż_i⟩,     ż_i = J_i v_i.

The computation, for all peers at once:

1. train batch: z = f(θ), u = ∂L_1/∂z, G = Jᵀu (one backward); θ' = θ − γG;
2. validation batch at θ': G_2 = ∂L_2/∂z_ens, ∂L_2/∂ω_j = ⟨G_2, z'_j⟩, v_i = ω_i J'_iᵀ G_2 (one backward);
3. ż = J v, either as the derivative of ⟨G(u), v⟩ with respect to u (``double_vjp``: a backward
   through step 1's backward graph, no second forward) or by forward mode (``jvp``:
   ``torch.func.jvp`` over ``functional_call``; recomputes the forward, holds less memory);
4. ∂/∂ω Σ_i ⟨u_i(ω), ż_i⟩ at the level of the logits: the loss's closed form
   ``mixed_omega_grad`` if it has one, otherwise a double backward through the loss, which is
   exact for any loss plugin differentiable in ω, linear in ω or not.

So the cost is about one inner forward+backward for step 1, one for step 2 and two thirds of one
for step 3, independent of M per peer. When the trainer hands over the inner step's own G, u and
z on the same batch at the same θ (``inner``: an :class:`~wml_framework.api.InnerGradients`),
step 1 is skipped, and ż comes from ``inner.tangents`` (a backward through the trainer's own
step, which kept its graph) or, without it, by forward mode. The real parameters are never touched (θ' enters through
``torch.func.functional_call``); peers run in eval mode; Hugging Face peers switch to eager
attention only where a derivative of a derivative is taken (SDPA's kernels have none).
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from wml_framework.api import (
    Batch,
    Loss,
    ensemble_loss_parts,
    peer_logits,
    trainable_parameters,
)

from .hypergrad_modes import eager_attention, eval_mode

__all__ = ["Hypergradient", "hypergradient", "logit_grads", "mixed_omega_grad", "mixed_omega_grad_autograd"]

EXACT, EXACT_ADAM, FIRST_ORDER = "exact", "exact_adam", "first_order"
JVP, DOUBLE_VJP = "jvp", "double_vjp"


@dataclass
class Hypergradient:
    """∇_ω F and its parts. ``second`` is ⟨∇_θ L_2(θ'), ∂/∂ω ∇_θ L_1(θ)⟩ (zero for first order)."""

    grad: Tensor
    direct: Tensor
    second: Tensor
    val_loss: float
    method: str
    seconds: dict = field(default_factory=dict)


class _PeerCall(nn.Module):
    """Wraps ``forward(peer, inputs)`` so that ``functional_call`` can swap the peer's parameters."""

    def __init__(self, peer: nn.Module, forward: Callable[[nn.Module, Any], Tensor]):
        super().__init__()
        self.peer = peer
        self._forward = forward

    def forward(self, inputs: Any) -> Tensor:
        return self._forward(self.peer, inputs)


def _call_params(peer: nn.Module) -> dict[str, Tensor]:
    """The peer's trainable parameters, named as ``functional_call`` sees them through :class:`_PeerCall`."""
    return {f"peer.{name}": p for name, p in trainable_parameters(peer).items()}


def _grads_or_zeros(grads: Sequence[Optional[Tensor]], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _split(flat: Sequence[Tensor], params: Sequence[dict]) -> list[dict]:
    out, k = [], 0
    for p in params:
        names = list(p)
        out.append(dict(zip(names, flat[k:k + len(names)])))
        k += len(names)
    return out


def _omega_leaf(omega: Tensor) -> Tensor:
    return omega.detach().to(torch.float64).clone().requires_grad_(True)


@dataclass
class _InnerStep:
    """Step 1: the virtual step θ' and what step 3 reuses (the train logits, and for the
    double-VJP route the differentiable graph of G as a function of u = ∂L_1/∂z)."""

    theta_1: list
    logits: Optional[list]
    graph_out: list = field(default_factory=list)
    graph_params: list = field(default_factory=list)
    u: list = field(default_factory=list)


def _scaled(step_grads: Sequence[Optional[Tensor]], inner_lr: float, precond) -> list:
    """γ G, or γ D ⊙ G with the diagonal preconditioner D (flat, one entry per parameter)."""
    if precond is None:
        return [None if g is None else inner_lr * g for g in step_grads]
    return [None if g is None else inner_lr * (g if d is None else d.to(g) * g) for g, d in zip(step_grads, precond)]


def _flat_precond(precond, theta) -> Optional[list]:
    """The preconditioner's ``diag`` as one flat list in the order of ``theta``'s parameters."""
    if precond is None:
        return None
    diag = precond.diag if hasattr(precond, "diag") else precond
    if len(diag) != len(theta):
        raise ValueError(f"hypergradient: the preconditioner has {len(diag)} peers, there are {len(theta)}")
    for i, (d, p) in enumerate(zip(diag, theta)):
        if len(d) != len(p):
            raise ValueError(f"hypergradient: the preconditioner of peer {i} has {len(d)} tensors for "
                             f"{len(p)} trainable parameters")
    return [t for d in diag for t in d]


def _inner_step(calls, theta, train: Batch, loss: Loss, omega: Tensor, inner_lr: float,
                teacher_logits, keep_graph: bool, reduce_mean=None, precond=None) -> _InnerStep:
    """G = ∇_θ L_1(θ, ω) = Σ_i J_iᵀ u_i with u_i = ∂L_1/∂z_i (one backward for all peers); θ' takes
    the G of the whole batch (``reduce_mean`` averages it over data-parallel processes)."""
    z_train = [functional_call(c, theta[i], (train.for_peer(i),)) for i, c in enumerate(calls)]
    u = logit_grads(loss, [z.detach() for z in z_train], train.labels, omega.detach(), teacher_logits)
    if keep_graph:                       # G stays differentiable in u: ż = ∂⟨G(u), v⟩/∂u later
        u = [g.requires_grad_(True) for g in u]
    flat_theta = [t for p in theta for t in p.values()]
    grads = torch.autograd.grad(z_train, flat_theta, grad_outputs=u, allow_unused=True, create_graph=keep_graph)
    step_grads = [None if g is None else (g.detach().clone() if reduce_mean else g.detach()) for g in grads]
    if reduce_mean:
        reduce_mean(step_grads)
    theta_1 = _split([(t - s).requires_grad_(True) if s is not None else t.detach().requires_grad_(True)
                      for t, s in zip(flat_theta, _scaled(step_grads, inner_lr, precond))], theta)
    step = _InnerStep(theta_1, [z.detach() for z in z_train], u=u)
    if keep_graph:
        step.graph_out = [g for g in grads if g is not None]
        step.graph_params = [k for k, g in enumerate(grads) if g is not None]
    return step


def _reused_inner_step(theta, inner, inner_lr: float, precond=None) -> _InnerStep:
    """Step 1 from the inner step's results: θ' = θ − γG (or θ − γ D ⊙ G) with G, u and z as the
    trainer computed them."""
    for params, grads in zip(theta, inner.grads):
        if len(grads) != len(params):
            raise ValueError(f"hypergradient: inner.grads has {len(grads)} tensors for a peer with {len(params)} "
                             "trainable parameters")
    flat_theta = [t for p in theta for t in p.values()]
    flat_grads = [None if g is None else g.detach().to(t.dtype)
                  for t, g in zip(flat_theta, (g for grads in inner.grads for g in grads))]
    theta_1 = _split([(t.detach() if s is None else t.detach() - s).requires_grad_(True)
                      for t, s in zip(flat_theta, _scaled(flat_grads, inner_lr, precond))], theta)
    return _InnerStep(theta_1, [z.detach() for z in inner.logits], u=[u.detach() for u in inner.logit_grads])


def _val_step(calls, theta_1, val: Batch, omega: Tensor) -> tuple[Tensor, list, float]:
    """L_2 at θ' on the validation batch: ∂L_2/∂ω = ⟨G, z_j⟩ and v_i = ω_i J_iᵀ G from one backward
    (G = ∂L_2/∂z_ens is the same tensor for every peer, so it is passed to all of them unscaled)."""
    z_val = [functional_call(c, theta_1[i], (val.for_peer(i),)) for i, c in enumerate(calls)]
    val_loss, direct, G = ensemble_loss_parts(z_val, val.labels, omega)
    flat = [t for p in theta_1 for t in p.values()]
    grads = _grads_or_zeros(torch.autograd.grad(z_val, flat, grad_outputs=[G] * len(z_val), allow_unused=True), flat)
    scale = [float(omega[i]) for i, p in enumerate(theta_1) for _ in p]
    return direct.detach(), [g.mul_(s) for g, s in zip(grads, scale)], val_loss


def _tangents_jvp(calls, theta, train: Batch, v_flat: list) -> list[Tensor]:
    """ż_i = J_i v_i by forward-mode AD (recomputes the primal; least memory)."""
    v = _split(v_flat, theta)
    z_dot = []
    for i, c in enumerate(calls):
        primals = {k: t.detach() for k, t in theta[i].items()}
        x = train.for_peer(i)
        _, dz = jvp(lambda params, c=c, x=x: functional_call(c, params, (x,)), (primals,), (v[i],))
        z_dot.append(dz.detach())
    return z_dot


def _tangents_double_vjp(step: _InnerStep, v_flat: list) -> list[Tensor]:
    """ż_i = J_i v_i as ∂⟨G(u), v⟩/∂u_i: one backward through step 1's backward graph."""
    v = [v_flat[k] for k in step.graph_params]
    z_dot = torch.autograd.grad(step.graph_out, step.u, grad_outputs=v, allow_unused=True)
    return [torch.zeros_like(u) if d is None else d.detach() for d, u in zip(z_dot, step.u)]


def hypergradient(peers: Sequence[nn.Module], loss: Loss, omega: Tensor, train: Batch, val: Batch,
                  inner_lr: float, *, forward: Callable[[nn.Module, Any], Tensor] = peer_logits,
                  teacher_logits: Optional[Tensor] = None, method: str = EXACT,
                  tangents: str = DOUBLE_VJP, inner=None,
                  reduce_mean: Optional[Callable[[Sequence[Optional[Tensor]]], None]] = None,
                  preconditioner=None) -> Hypergradient:
    """∇_ω F(ω) at the given ω, exactly (``method="exact"``) or with L_2 at θ (``"first_order"``).

    ``method="exact_adam"`` takes the virtual step of the optimizer instead of SGD's,
    θ' = θ − γ D ⊙ ∇_θ L_1, with D the ``diag`` of ``preconditioner`` (an
    :class:`~wml_framework.api.AdamPreconditioner`, required), so that
    g_j = ∂L_2/∂ω_j(θ') − γ ⟨D ⊙ ∇_θ L_2(θ'), ∇_θ B_j⟩.

    ``tangents`` picks how ż = J v is computed: ``"double_vjp"`` (default: reuses the train
    forward of step 1, fastest) or ``"jvp"`` (forward mode: recomputes it, keeps less memory).
    ``inner`` (an ``InnerGradients`` of ``train`` at the peers' current weights) replaces step 1;
    ż then comes from ``inner.tangents`` when given, else by ``"jvp"``. Peers run in eval mode, and Hugging Face peers with eager attention
    wherever a derivative of a derivative is taken (both restored afterwards). ``teacher_logits``
    go to the loss. ``reduce_mean`` (``OuterContext.reduce_mean``) averages, in place, what each
    data-parallel process computes from its share of the batches: G, ∂L_2/∂ω, ∇_θL_2(θ'), L_2 and
    the second term; every process then returns the hypergradient of the whole batches.
    """
    _check_choices(method, tangents, preconditioner)
    with eval_mode(peers):
        if method == FIRST_ORDER:
            return _first_order(peers, forward, val, omega, reduce_mean)
        problem = _Problem(peers, [_PeerCall(p, forward) for p in peers], [_call_params(p) for p in peers],
                           loss, omega, train, val, inner_lr, teacher_logits, reduce_mean)
        problem.precond = _flat_precond(preconditioner, problem.theta) if method == EXACT_ADAM else None
        return _exact(problem, method, tangents, inner)


def _check_choices(method: str, tangents: str, preconditioner) -> None:
    if method not in (EXACT, EXACT_ADAM, FIRST_ORDER):
        raise ValueError(f"hypergradient: method must be {EXACT!r}, {EXACT_ADAM!r} or {FIRST_ORDER!r}, got {method!r}")
    if method == EXACT_ADAM and preconditioner is None:
        raise ValueError("hypergradient 'exact_adam' needs the optimizer's preconditioner "
                         "(OuterContext.preconditioner), and none was given")
    if tangents not in (JVP, DOUBLE_VJP):
        raise ValueError(f"hypergradient: tangents must be {JVP!r} or {DOUBLE_VJP!r}, got {tangents!r}")


def _reducer(reduce_mean) -> Callable:
    """``reduced(*tensors)``: averages them in place over the data-parallel processes (if any)."""
    def reduced(*tensors):
        if reduce_mean is not None:
            reduce_mean(list(tensors))
        return tensors
    return reduced


class _Clock:
    """Seconds spent per phase: ``with clock("val_grad"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = time.perf_counter() - t0


def _first_order(peers, forward, val: Batch, omega: Tensor, reduce_mean) -> Hypergradient:
    """∂L_2/∂ω at θ: no virtual step, so no second term."""
    clock = _Clock()
    with clock("val_grad"):
        with torch.no_grad():
            z_val = [forward(p, val.for_peer(i)) for i, p in enumerate(peers)]
        val_loss, direct, _ = ensemble_loss_parts(z_val, val.labels, omega)
        direct, val_loss = _reduced_val(_reducer(reduce_mean), direct, val_loss)
    return Hypergradient(direct, direct, torch.zeros_like(direct), val_loss, FIRST_ORDER, clock.seconds)


@dataclass
class _Problem:
    """What every step of the exact hypergradient reads: the peers (wrapped for ``functional_call``),
    their trainable parameters θ, the loss, ω, both batches, γ, and the flat preconditioner D (or None)."""

    peers: Sequence[nn.Module]
    calls: list
    theta: list
    loss: Loss
    omega: Tensor
    train: Batch
    val: Batch
    inner_lr: float
    teacher_logits: Optional[Tensor]
    reduce_mean: Optional[Callable]
    precond: Optional[list] = None


def _exact(pb: _Problem, method: str, tangents: str, inner) -> Hypergradient:
    """Steps 1–4 of the module docstring, timed."""
    clock, reduced = _Clock(), _reducer(pb.reduce_mean)
    double_vjp = tangents == DOUBLE_VJP and inner is None
    with clock("inner_grad"):
        step = _step_one(pb, inner, double_vjp)
    if getattr(pb.loss, "mixed_from_logit_grads", False):
        step.logits = None           # not needed by step 4: holding (M, n, V) less speeds up steps 2-3
    with clock("val_grad"):
        direct, v_flat, val_loss = _val_step(pb.calls, step.theta_1, pb.val, pb.omega)
        reduced(*v_flat)
        if pb.precond is not None:   # ⟨D ⊙ ∇L_2, ∇B_j⟩: the tangents are taken along D ⊙ v
            v_flat = [v if d is None else v * d.to(v) for v, d in zip(v_flat, pb.precond)]
        direct, val_loss = _reduced_val(reduced, direct, val_loss)
        step.theta_1 = []
    with clock("tangents"):
        z_dot = _step_three(pb, step, inner, double_vjp, v_flat)
    del v_flat, step.graph_out
    with clock("mixed_grad"):
        second = mixed_omega_grad(pb.loss, step.logits, pb.train.labels, pb.omega, z_dot, pb.teacher_logits,
                                  logit_grads=[u.detach() for u in step.u])
    second = reduced(second.detach().to(direct).clone())[0]
    return Hypergradient(direct - pb.inner_lr * second, direct, second, val_loss, method, clock.seconds)


def _step_one(pb: _Problem, inner, double_vjp: bool) -> _InnerStep:
    """θ' from the trainer's own step 1 when it hands it over, else computed here."""
    if inner is not None:
        return _reused_inner_step(pb.theta, inner, pb.inner_lr, pb.precond)
    with eager_attention(pb.peers if double_vjp else []):
        return _inner_step(pb.calls, pb.theta, pb.train, pb.loss, pb.omega, pb.inner_lr, pb.teacher_logits,
                           keep_graph=double_vjp, reduce_mean=pb.reduce_mean, precond=pb.precond)


def _step_three(pb: _Problem, step: _InnerStep, inner, double_vjp: bool, v_flat: list) -> list[Tensor]:
    """ż = J v: through the trainer's kept graph, through step 1's own, or by forward mode."""
    with eager_attention(pb.peers):
        if inner is not None and getattr(inner, "tangents", None) is not None:
            return inner.tangents(v_flat)           # a backward through the trainer's own step
        if double_vjp:
            return _tangents_double_vjp(step, v_flat)
        return _tangents_jvp(pb.calls, pb.theta, pb.train, v_flat)


def _reduced_val(reduced, direct: Tensor, val_loss: float) -> tuple[Tensor, float]:
    """∂L_2/∂ω and L_2 averaged over processes (one all-reduce)."""
    both = torch.cat([direct.detach().reshape(-1), torch.tensor([float(val_loss)], dtype=direct.dtype,
                                                                device=direct.device)])
    reduced(both)
    return both[:-1].clone(), float(both[-1])


def logit_grads(loss: Loss, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                teacher_logits: Optional[Tensor] = None) -> list[Tensor]:
    """u_i = ∂L_1/∂z_i (ω constant): the loss's own ``logit_grads`` if it has one, else autograd."""
    fast = getattr(loss, "logit_grads", None)
    if fast is not None:
        return [g.detach() for g in fast(logits, labels, omega, teacher_logits=teacher_logits)]
    z_leaf = [z.detach().requires_grad_(True) for z in logits]
    with torch.enable_grad():
        total = loss(z_leaf, labels, omega, teacher_logits=teacher_logits).total
        grads = torch.autograd.grad(total, z_leaf, allow_unused=True) if total.requires_grad else [None] * len(z_leaf)
    return [g.detach() for g in _grads_or_zeros(grads, z_leaf)]


def mixed_omega_grad(loss: Loss, logits: Optional[Sequence[Tensor]], labels: Tensor, omega: Tensor,
                     tangents: Sequence[Tensor], teacher_logits: Optional[Tensor] = None,
                     logit_grads: Optional[Sequence[Tensor]] = None) -> Tensor:
    """∂/∂ω Σ_i ⟨∂L_1/∂z_i, ż_i⟩ with the logits and their tangents held fixed, shape (M,).

    Uses the loss's own ``mixed_omega_grad`` when it has one (a closed form; it also receives
    ``logit_grads`` = ∂L_1/∂z if its signature takes them; ``logits`` are None when the loss says
    ``mixed_from_logit_grads``), otherwise a double backward through the loss at the logit level,
    which works for any loss differentiable in ω.
    """
    fast = getattr(loss, "mixed_omega_grad", None)
    if fast is not None:
        kwargs = {"teacher_logits": teacher_logits}
        if logit_grads is not None and "logit_grads" in inspect.signature(fast).parameters:
            kwargs["logit_grads"] = logit_grads
        return fast(logits, labels, omega, tangents, **kwargs)
    return mixed_omega_grad_autograd(loss, logits, labels, omega, tangents, teacher_logits)


def mixed_omega_grad_autograd(loss: Loss, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                              tangents: Sequence[Tensor], teacher_logits: Optional[Tensor] = None) -> Tensor:
    """The generic route of :func:`mixed_omega_grad`: autograd.grad with create_graph, then ∂/∂ω."""
    w = _omega_leaf(omega)
    z_leaf = [z.detach().requires_grad_(True) for z in logits]
    with torch.enable_grad():
        l1 = loss(z_leaf, labels, w, teacher_logits=teacher_logits).total
        dz = torch.autograd.grad(l1, z_leaf, create_graph=True, allow_unused=True)
        inner = sum(((g * d).sum() for g, d in zip(dz, tangents) if g is not None),
                    torch.zeros((), dtype=torch.float64, device=w.device))
        if not inner.requires_grad:
            return torch.zeros_like(w).detach()
        (second,) = torch.autograd.grad(inner, w, allow_unused=True)
    return torch.zeros_like(w).detach() if second is None else second.detach()
