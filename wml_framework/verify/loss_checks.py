"""Checks of a loss plugin: generic properties every loss must have, and its reference points.

Generic: result shapes; gradients in the logits and in ω against central differences (both
code paths: ω constant and ω requiring grad); stop-gradient on targets; the mixed derivative
the exact hypergradient uses; the optional fast paths against finite differences and autograd;
ignored labels (no effect, no gradient, not counted); token means; finite results on ±1e4 logits
in float32 and bfloat16; a batch whose labels are all ignored. Every check but the last runs on the
dense problems and again on the masked-label ones (``loss_cases(seed, masked=True)``).
Reference points: what the plugin declared it equals, at T = 1 and two other settings.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..api import IGNORE_INDEX, ReferencePoint
from ..config import FIELDS
from .problems import (
    LOSS_VARIANTS,
    LossCase,
    fd_error,
    labels,
    loss_cases,
    make_config,
    masked_labels,
    rel,
    simplex,
)

__all__ = ["FD_STEP", "Failed", "call", "grad", "result_shapes", "grad_logits_fd", "stop_gradient",
           "grad_omega_fd", "mixed_fd", "mixed_closed_form", "logit_grads_fd", "ignored_positions",
           "ignored_not_counted", "all_ignored", "token_mean", "extreme", "reference_values", "check_reference", "computed_with", "split_settings",
           "VARIED"]

FD_STEP = 1e-5
#: the config keys verify varies itself (LOSS_VARIANTS): a reference point need not pin them
VARIED = tuple(LOSS_VARIANTS[0])


class Failed(Exception):
    """A check's own verdict of failure (as opposed to a plugin raising)."""


def call(loss, logits, case: LossCase, omega: Tensor, teacher=None):
    teacher = case.teacher if teacher is None else teacher
    return loss(logits, case.labels, omega, teacher_logits=teacher if loss.needs_teacher else None)


def grad(out: Tensor, inputs: list, **kw) -> list[Tensor]:
    if not out.requires_grad:          # the output does not depend on any input (e.g. ω unused)
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(out, inputs, allow_unused=True, **kw)
    return [torch.zeros_like(x) if gi is None else gi for gi, x in zip(gs, inputs)]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


# ----------------------------------------------------------------------------- generic checks

def result_shapes(loss, p: LossCase) -> float:
    M = len(p.logits)
    res = call(loss, p.logits, p, p.omega)
    for field in ("per_peer", "ce", "kl"):
        t = getattr(res, field)
        if not isinstance(t, Tensor) or tuple(t.shape) != (M,):
            raise Failed(f"{field} has shape {tuple(getattr(t, 'shape', ()))}, expected ({M},)")
        if not bool(torch.isfinite(t).all()):
            raise Failed(f"{field} is not finite: {t.tolist()}")
    if res.total.dim() != 0:
        raise Failed(f"total has shape {tuple(res.total.shape)}, expected a scalar")
    return rel(float(res.total), float(res.per_peer.sum()))


def grad_logits_fd(loss, p: LossCase, omega_requires_grad: bool, g: torch.Generator) -> float:
    """∂L_i/∂z_i by autograd vs central differences of L_i along random directions."""
    worst = 0.0
    omega = p.omega.clone().requires_grad_(omega_requires_grad)
    for i in range(len(p.logits)):
        zs = [z.clone().requires_grad_(k == i) for k, z in enumerate(p.logits)]
        with torch.enable_grad():
            (gi,) = grad(call(loss, zs, p, omega).per_peer[i], [zs[i]])
        for _ in range(2):
            u = torch.randn(zs[i].shape, generator=g, dtype=torch.float64)

            def f(s: float) -> float:
                moved = [z.detach() + (s * u if k == i else 0.0) for k, z in enumerate(zs)]
                with torch.no_grad():
                    return float(call(loss, moved, p, p.omega).per_peer[i])

            fd = (f(FD_STEP) - f(-FD_STEP)) / (2 * FD_STEP)
            worst = max(worst, fd_error(float((gi * u).sum()), fd))
    return worst


def stop_gradient(loss, p: LossCase) -> float:
    """Targets are stop-gradient: ∂(Σ_k L_k)/∂z_i equals ∂L_i/∂z_i. (Each gradient from a fresh
    call: a loss may legitimately refuse a second backward through one graph.)"""
    def fresh():
        zs = [z.clone().requires_grad_() for z in p.logits]
        return zs, call(loss, zs, p, p.omega)

    zs, res = fresh()
    total = grad(res.total, zs)
    worst = 0.0
    for i in range(len(zs)):
        zs_i, res_i = fresh()
        (own,) = grad(res_i.per_peer[i], [zs_i[i]])
        worst = max(worst, rel(total[i].numpy(), own.numpy()))
    return worst


def grad_omega_fd(loss, p: LossCase, g: torch.Generator) -> float:
    """∂(Σ_i L_i)/∂ω by autograd vs central differences (ω moved off the simplex)."""
    w = p.omega.clone().requires_grad_()
    (gw,) = grad(call(loss, p.logits, p, w).total, [w])
    worst = 0.0
    for _ in range(3):
        u = torch.randn(w.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (float(call(loss, p.logits, p, p.omega + FD_STEP * u).total)
                  - float(call(loss, p.logits, p, p.omega - FD_STEP * u).total)) / (2 * FD_STEP)
        worst = max(worst, fd_error(float((gw * u).sum()), fd))
    return worst


def _mixed(loss, p: LossCase, omega: Tensor, u: list) -> Tensor:
    """h(ω) = Σ_i ⟨∂L/∂z_i, u_i⟩, the quantity whose ω-gradient the exact hypergradient needs."""
    zs = [z.clone().requires_grad_() for z in p.logits]
    dz = grad(call(loss, zs, p, omega).total, zs, create_graph=True)
    return sum(((d * ui).sum() for d, ui in zip(dz, u)), torch.zeros((), dtype=torch.float64))


def mixed_fd(loss, p: LossCase, g: torch.Generator) -> float:
    u = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in p.logits]
    w = p.omega.clone().requires_grad_()
    h = _mixed(loss, p, w, u)
    (gw,) = grad(h, [w]) if h.requires_grad else (torch.zeros_like(w),)
    worst = 0.0
    for _ in range(2):
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        fd = (float(_mixed(loss, p, p.omega + FD_STEP * d, u).detach())
              - float(_mixed(loss, p, p.omega - FD_STEP * d, u).detach())) / (2 * FD_STEP)
        worst = max(worst, fd_error(float((gw * d).sum()), fd))
    return worst


def mixed_closed_form(loss, p: LossCase, g: torch.Generator) -> float:
    """A loss's own ``mixed_omega_grad`` (the hypergradient's fast path) against the double backward."""
    u = [torch.randn(z.shape, generator=g, dtype=torch.float64) for z in p.logits]
    w = p.omega.clone().requires_grad_()
    h = _mixed(loss, p, w, u)
    (generic,) = grad(h, [w]) if h.requires_grad else (torch.zeros_like(w),)
    teacher = p.teacher if loss.needs_teacher else None
    results = [loss.mixed_omega_grad(p.logits, p.labels, p.omega, u, teacher_logits=teacher)]
    if "logit_grads" in inspect.signature(loss.mixed_omega_grad).parameters:
        zs = [z.clone().requires_grad_() for z in p.logits]
        grads = grad(call(loss, zs, p, p.omega).total, zs)
        results.append(loss.mixed_omega_grad(p.logits, p.labels, p.omega, u, teacher_logits=teacher,
                                             logit_grads=grads))
        if getattr(loss, "mixed_from_logit_grads", False):     # it promises to need no logits
            results.append(loss.mixed_omega_grad(None, p.labels, p.omega, u, teacher_logits=teacher,
                                                 logit_grads=grads))
    for fast in results:
        if tuple(fast.shape) != (len(p.logits),):
            raise Failed(f"mixed_omega_grad returned shape {tuple(fast.shape)}, expected ({len(p.logits)},)")
    return max(rel(_np(fast), _np(generic)) for fast in results)


def logit_grads_fd(loss, p: LossCase, g: torch.Generator) -> float:
    """A loss's own ``logit_grads`` (∂total/∂z_i with targets stop-gradient, i.e. ∂L_i/∂z_i) against
    central differences of L_i: independent of the loss's backward, which may share code with
    ``logit_grads``."""
    fast = loss.logit_grads(p.logits, p.labels, p.omega, teacher_logits=p.teacher if loss.needs_teacher else None)
    if len(fast) != len(p.logits) or any(tuple(f.shape) != tuple(z.shape) for f, z in zip(fast, p.logits)):
        raise Failed("logit_grads must return one tensor per peer, shaped like its logits")
    worst = 0.0
    for i in range(len(p.logits)):
        for _ in range(2):
            u = torch.randn(p.logits[i].shape, generator=g, dtype=torch.float64)

            def f(s: float) -> float:
                moved = [z + (s * u if k == i else 0.0) for k, z in enumerate(p.logits)]
                with torch.no_grad():
                    return float(call(loss, moved, p, p.omega).per_peer[i])

            fd = (f(FD_STEP) - f(-FD_STEP)) / (2 * FD_STEP)
            worst = max(worst, fd_error(float((fast[i].detach() * u).sum()), fd))
    return worst


def ignored_positions(loss, p: LossCase) -> float:
    """Logits at ignored positions change nothing and receive no gradient."""
    mask = (p.labels == IGNORE_INDEX).unsqueeze(-1)
    garbage = [torch.where(mask, 50.0 * torch.randn_like(z), z).requires_grad_() for z in p.logits]
    teacher = torch.where(mask, -30.0 * torch.ones_like(p.teacher), p.teacher)
    base = call(loss, p.logits, p, p.omega).per_peer.detach()
    res = call(loss, garbage, p, p.omega, teacher=teacher)
    grads = grad(res.total, garbage)
    leak = max(float(gz.masked_select(mask).abs().max()) if bool(mask.any()) else 0.0 for gz in grads)
    if leak != 0.0:
        raise Failed(f"ignored positions receive gradient (max |∂L/∂z| = {leak:.3g})")
    return rel(res.per_peer.detach().numpy(), base.numpy())


def _pad(t: Tensor, dim: int, extra: int, value) -> Tensor:
    shape = list(t.shape)
    shape[dim] = extra
    fill = torch.full(shape, value, dtype=t.dtype) if isinstance(value, (int, float)) else value(shape)
    return torch.cat([t, fill], dim)


def ignored_not_counted(loss, p: LossCase) -> float:
    """Positions labelled -100 do not count in the token mean: padding the batch with ignored
    positions (a whole extra sequence, and two more positions in every sequence, with random logits)
    changes nothing. Catches a mean over all B·T positions instead of the n scored ones, which is
    self-consistent (its gradients match its values, ignored logits get no gradient) and equals the
    right loss when nothing is ignored."""
    a = call(loss, p.logits, p, p.omega).per_peer.detach()
    worst = 0.0
    for dim, extra in ((0, 1), (1, 2)):
        noise = lambda shape: 3.0 * torch.randn(shape, dtype=torch.float64)  # noqa: E731
        zs = [_pad(z, dim, extra, noise) for z in p.logits]
        q = LossCase(zs, _pad(p.labels, dim, extra, IGNORE_INDEX), p.omega, _pad(p.teacher, dim, extra, noise))
        worst = max(worst, rel(call(loss, zs, q, p.omega).per_peer.detach().numpy(), a.numpy()))
    return worst


def all_ignored(loss, seed: int) -> float:
    """A batch with no scored position at all (a masked-LM micro-batch can draw none): the loss and
    its parts are finite and nothing flows back to the logits or ω. Returns the largest |gradient|."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for M in (1, 3):
        B, T, V = 2, 5, 7
        logits = [2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64) for _ in range(M)]
        teacher = 2.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
        p = LossCase(logits, torch.full((B, T), IGNORE_INDEX, dtype=torch.long), simplex(M, g), teacher)
        for omega_grad in (False, True):
            zs = [z.clone().requires_grad_() for z in logits]
            w = p.omega.clone().requires_grad_(omega_grad)
            res = call(loss, zs, p, w)
            bad = [name for name, t in (("total", res.total), ("per_peer", res.per_peer), ("ce", res.ce),
                                        ("kl", res.kl)) if not bool(torch.isfinite(t).all())]
            if bad:
                raise Failed(f"non-finite {', '.join(bad)} when every label is ignored (M={M})")
            grads = grad(res.total, zs + ([w] if omega_grad else []))
            worst = max([worst] + [float(gr.abs().max()) for gr in grads])
    return worst


def token_mean(loss, p: LossCase) -> float:
    """A token mean changes neither when the batch is repeated (a sum would) nor when its (B, T)
    tokens are laid out as one long sequence (a mean over sequences would)."""
    a = call(loss, p.logits, p, p.omega).per_peer.detach()
    twice = [torch.cat([z, z], 0) for z in p.logits]
    q = LossCase(twice, torch.cat([p.labels, p.labels], 0), p.omega, torch.cat([p.teacher, p.teacher], 0))
    b = call(loss, twice, q, p.omega).per_peer.detach()
    V = p.logits[0].shape[-1]
    flat = [z.reshape(1, -1, V) for z in p.logits]
    r = LossCase(flat, p.labels.reshape(1, -1), p.omega, p.teacher.reshape(1, -1, V))
    c = call(loss, flat, r, p.omega).per_peer.detach()
    return max(rel(b.numpy(), a.numpy()), rel(c.numpy(), a.numpy()))


def extreme(loss, dtype: torch.dtype, seed: int, masked: bool = False) -> None:
    """Logits of ±1e4 in a narrow dtype give finite losses and finite gradients."""
    g = torch.Generator().manual_seed(seed)
    M, B, T, V = 3, 2, 4, 11
    if masked:
        B, T = 3, 8
    logits = [(1e4 * torch.randn(B, T, V, generator=g)).clamp(-1e4, 1e4).to(dtype) for _ in range(M)]
    teacher = (1e4 * torch.randn(B, T, V, generator=g)).clamp(-1e4, 1e4).to(dtype)
    y = masked_labels((B, T), V, g) if masked else labels((B, T), V, g)
    for omega_grad in (False, True):
        zs = [z.clone().requires_grad_() for z in logits]
        w = simplex(M, g).requires_grad_(omega_grad)
        res = loss(zs, y, w, teacher_logits=teacher if loss.needs_teacher else None)
        grads = grad(res.total, zs + ([w] if omega_grad else []))
        bad = [name for name, t in (("total", res.total), ("ce", res.ce), ("kl", res.kl))
               if not bool(torch.isfinite(t).all())]
        bad += [f"grad[{k}]" for k, gr in enumerate(grads) if not bool(torch.isfinite(gr).all())]
        if bad:
            raise Failed(f"non-finite {', '.join(bad)} ({dtype}, ω requires grad: {omega_grad})")


# ----------------------------------------------------------------------------- reference points

def reference_values(loss, p: LossCase, expected: dict) -> dict[str, float]:
    """Each value a reference point gives, against what the loss computes (relative errors)."""
    out: dict[str, float] = {}
    res = call(loss, p.logits, p, p.omega)
    for key in ("per_peer", "ce", "kl"):
        if key in expected:
            out[key] = rel(_np(getattr(res, key)), expected[key])
    if "total" in expected:
        out["total"] = rel(float(res.total), expected["total"])
    if "grad_logits" in expected:
        ref = expected["grad_logits"]
        for tag, omega_grad in (("ω const", False), ("ω requires grad", True)):
            zs = [z.clone().requires_grad_() for z in p.logits]
            w = p.omega.clone().requires_grad_(omega_grad)
            got = grad(call(loss, zs, p, w).total, zs)
            out[f"grad_logits ({tag})"] = max(rel(_np(gz), r) for gz, r in zip(got, ref))
        if callable(getattr(loss, "logit_grads", None)):
            fast = loss.logit_grads(p.logits, p.labels, p.omega, teacher_logits=p.teacher if loss.needs_teacher else None)
            out["grad_logits (logit_grads)"] = max(rel(_np(f), r) for f, r in zip(fast, ref))
    if "grad_omega" in expected:
        w = p.omega.clone().requires_grad_()
        (gw,) = grad(call(loss, p.logits, p, w).total, [w])
        out["grad_omega"] = rel(_np(gw), expected["grad_omega"])
    unknown = set(expected) - {"per_peer", "ce", "kl", "total", "grad_logits", "grad_omega"}
    if unknown:
        raise Failed(f"the reference point returned unknown keys {sorted(unknown)}")
    return out


def check_reference(make: Callable, point: ReferencePoint, seed: int, resolve: Callable = dict,
                    notes: Optional[list] = None, masked: bool = False) -> dict[str, float]:
    """Worst error per compared value over every problem (the masked-label ones with ``masked``)
    and every setting of LOSS_VARIANTS.

    ``make(config, options)`` creates the loss; ``resolve(options)`` fills in the declared defaults.
    A setting LOSS_VARIANTS varies that the point pins (``"temperature": 1.0``) is still varied when
    the point's values change with it (the point computes with it, so it holds at any value; pinned,
    a loss missing its T² would pass at T = 1): the point is checked at the pinned value and at
    verify's others. A pinned setting the point's values do not change with is kept, and a line
    saying what goes unchecked is appended to ``notes``."""
    config_keys, options = split_settings(point)
    options = resolve(options)
    released = computed_with(point, config_keys, options, seed)
    if notes is not None:
        for key in sorted(released):
            notes.append(f"reference point {point.name!r} pins {key} = {config_keys[key]!r} but computes with it: "
                         f"it is checked at {key} = {config_keys[key]!r} and at verify's other values")
        for key in sorted(set(config_keys) & set(VARIED) - released):
            notes.append(f"reference point {point.name!r} pins {key} = {config_keys[key]!r} and its values do not "
                         f"change with it, so it is checked at {key} = {config_keys[key]!r} only: a loss that "
                         f"mishandles {key} ({'a missing T²' if 'temperature' in key else 'α and 1 − α swapped'}) "
                         "can pass it")
    settings_list: list[dict] = []
    for variant in LOSS_VARIANTS:
        for free in ((), released):
            settings = {**variant, **{k: v for k, v in config_keys.items() if k not in free}}
            if settings not in settings_list:
                settings_list.append(settings)
    worst: dict[str, tuple] = {}
    for settings in settings_list:
        cfg = make_config(3, **settings)
        loss = make(cfg, options)
        for case in loss_cases(seed, masked):
            expected = point.expected(case.as_problem(cfg, options))
            for key, err in reference_values(loss, case, expected).items():
                if key not in worst or err > worst[key][0]:
                    where = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("temperature", "loss_alpha", "kd_temperature", "kd_alpha"))
                    worst[key] = (err, f"worst at M={len(case.logits)}, {where}")
    return worst


def computed_with(point: ReferencePoint, config_keys: dict, options: dict, seed: int) -> set[str]:
    """The settings of VARIED that ``point`` pins and computes with: moving one to another value
    verify tries changes what the point returns on some problem. A point that raises at the other
    value needs its pin (it is kept)."""
    found = set()
    for key in sorted(set(config_keys) & set(VARIED)):
        other = next(v[key] for v in LOSS_VARIANTS if v[key] != config_keys[key])
        pinned = make_config(3, **{**LOSS_VARIANTS[0], **config_keys})
        moved = make_config(3, **{**LOSS_VARIANTS[0], **config_keys, key: other})
        try:
            if any(_differ(point.expected(case.as_problem(pinned, options)), point.expected(case.as_problem(moved, options)))
                   for case in loss_cases(seed)):
                found.add(key)
        except Exception:  # noqa: BLE001 - it cannot compute at the other value: it needs the pin
            continue
    return found


def _differ(a, b) -> bool:
    """Whether two reference values (dicts, lists, arrays, numbers) differ anywhere."""
    if isinstance(a, dict) or isinstance(b, dict):
        return not (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()) or any(
            _differ(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and any(isinstance(x, (list, tuple, np.ndarray)) for x in a):
        return not isinstance(b, (list, tuple)) or len(a) != len(b) or any(_differ(x, y) for x, y in zip(a, b))
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return a != b
    return x.shape != y.shape or not np.array_equal(x, y)


def split_settings(point: ReferencePoint) -> tuple[dict, dict]:
    """A reference point's settings as (config keys, plugin options)."""

    config_keys = {k: v for k, v in point.settings.items() if "." not in k and k in FIELDS}
    options = {k.split(".", 1)[-1]: v for k, v in point.settings.items() if k not in config_keys}
    return config_keys, options
