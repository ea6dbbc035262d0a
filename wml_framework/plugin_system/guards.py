"""Run-time guards around the loss and updater plugins.

Why: a plugin that returns the wrong thing must fail loudly, naming itself, instead of training
happily on nonsense (an updater whose ω sums to 2 doubles every KL term; a loss that raises deep
inside torch gives a traceback that names no plugin). The guards check every call's result and
put the plugin's name on every error; they add one Python call per step, nothing on the tensors.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch
from torch import Tensor

from ..api import (
    ATTENTIONS,
    IGNORE_INDEX,
    FastPathLoss,
    InitResult,
    LossResult,
    Updater,
    UpdateResult,
)
from ..runtime.distributed import is_peer_failure
from .host import Entry, PluginError
from .simplex import SIMPLEX_TOL, OffSimplex, on_simplex

__all__ = ["SIMPLEX_TOL", "NonFiniteOmega", "at_step", "check_simplex", "jsonable", "GuardedLoss", "GuardedUpdater",
           "GuardedInitializer", "GuardedObjective", "HEADS", "SCORINGS", "checked_initializer", "checked_loss",
           "checked_objective", "checked_updater"]

#: what an objective's ``head`` and ``scoring`` may be (api.Objective)
HEADS, SCORINGS = ("causal", "masked"), ("causal", "mlm", "mntp")


class NonFiniteOmega(PluginError):
    """An updater produced NaN or infinite weights (usually from a diverging peer): the run skips
    that outer step and keeps ω, rather than stopping."""


def at_step(exc: PluginError, where: str) -> PluginError:
    """``exc`` saying when it happened: ``where`` (``"step 4"``) is added to the thing that failed
    (``updater 'x' step(), at step 4: ω sums to 2``), once; the class and the problem are kept."""
    if getattr(exc, "when", None) is not None:
        return exc
    hook = f"{exc.hook}, at {where}"
    try:
        out = type(exc)(exc.plugin, hook, exc.problem)
    except TypeError:              # a subclass with a constructor of its own
        out = PluginError(exc.plugin, hook, exc.problem)
    out.when = where
    return out


def _fail(entry: Entry, what: str, problem: str) -> PluginError:
    return PluginError(entry.plugin, f"{entry.kind} {entry.name!r} {what}", problem)


def check_simplex(omega: Any, num_peers: int, entry: Entry, what: str) -> Tensor:
    """ω as float64, on the simplex within SIMPLEX_TOL, renormalised to sum 1 exactly; a non-finite
    ω raises :class:`NonFiniteOmega` (the run skips the step), any other fault a PluginError."""
    try:
        w = on_simplex(omega, num_peers)
    except OffSimplex as exc:
        error = PluginError if exc.finite else NonFiniteOmega
        raise error(entry.plugin, f"{entry.kind} {entry.name!r} {what}", str(exc)) from None
    return w / w.sum()


def jsonable(value: Any) -> Any:
    """A log-friendly form of an info value (numbers, strings, lists and dicts of them), or None."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Real):
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    if isinstance(value, (list, tuple)):
        items = [jsonable(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if isinstance(value, Mapping):
        items = {str(k): jsonable(v) for k, v in value.items()}
        return None if any(items[str(k)] is None and v is not None for k, v in value.items()) else items
    return None


class GuardedLoss:
    """A loss plugin whose results are checked and whose errors name the plugin.

    The attributes of ``api.Loss`` and ``api.FastPathLoss`` are forwarded explicitly (an optional
    one with its declared default); anything else the plugin has is reached through it as well."""

    def __init__(self, loss: Any, entry: Entry):
        self._loss, self._entry = loss, entry
        if not callable(loss) or not hasattr(loss, "needs_teacher"):
            raise _fail(entry, "factory", "the object it made must be callable and have `needs_teacher` "
                                          f"(see docs/plugins.md), got {loss!r}")
        for name in ("logit_grads", "mixed_omega_grad"):    # optional fast paths: present only if the plugin has them
            if callable(getattr(loss, name, None)):
                setattr(self, name, getattr(loss, name))

    @property
    def needs_teacher(self) -> bool:
        return bool(self._loss.needs_teacher)

    @property
    def mixed_from_logit_grads(self) -> bool:
        return bool(getattr(self._loss, "mixed_from_logit_grads", FastPathLoss.mixed_from_logit_grads))

    def __getattr__(self, name: str) -> Any:  # the plugin's own attributes (its settings, its counters)
        return getattr(self._loss, name)

    def __call__(self, logits, labels, omega, teacher_logits=None) -> LossResult:
        try:
            out = self._loss(logits, labels, omega, teacher_logits=teacher_logits)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
            if is_peer_failure(exc):     # another rank of the run went away: not this plugin's fault
                raise
            raise _fail(self._entry, "at run time", f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(out, LossResult):
            raise _fail(self._entry, "at run time", f"returned {type(out).__name__}, expected a LossResult")
        M = len(logits)
        if not isinstance(out.total, Tensor) or out.total.dim() != 0:
            raise _fail(self._entry, "at run time", "LossResult.total must be a scalar tensor")
        for name in ("per_peer", "ce", "kl"):
            t = getattr(out, name)
            if not isinstance(t, Tensor) or tuple(t.shape) != (M,):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise _fail(self._entry, "at run time", f"LossResult.{name} has shape {shape}, expected ({M},)")
        return out

    def __repr__(self) -> str:
        return f"GuardedLoss({self._loss!r})"


class GuardedUpdater:
    """An updater plugin whose ω is checked (simplex, shape, finite) and whose info is made
    loggable, with a note for what cannot be logged."""

    def __init__(self, updater: Any, entry: Entry, num_peers: int):
        missing = [m for m in ("initial_omega", "step", "state_dict", "load_state_dict") if not callable(getattr(updater, m, None))]
        if missing or not hasattr(updater, "needs_validation"):
            raise _fail(entry, "factory", f"the object it made lacks {', '.join(missing) or 'needs_validation'} "
                                          "(see docs/plugins.md)")
        self._updater, self._entry, self.num_peers = updater, entry, num_peers
        self._notes: list[str] = []     # the guard's own: info values it could not log

    # the attributes of api.Updater the run reads, an optional one with its declared default
    @property
    def needs_validation(self) -> bool:
        return bool(self._updater.needs_validation)

    @property
    def uses_inner_gradients(self) -> bool:
        return bool(getattr(self._updater, "uses_inner_gradients", Updater.uses_inner_gradients))

    @property
    def uses_preconditioner(self) -> bool:
        return bool(getattr(self._updater, "uses_preconditioner", Updater.uses_preconditioner))

    @property
    def notes(self) -> list[str]:
        """The plugin's notes, then the guard's."""
        return [*(str(n) for n in getattr(self._updater, "notes", Updater.notes)), *self._notes]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._updater, name)

    def initial_omega(self) -> Tensor:
        return check_simplex(self._call("initial_omega"), self.num_peers, self._entry, "initial_omega()")

    def step(self, ctx) -> UpdateResult:
        out = self._call("step", ctx)
        if not isinstance(out, UpdateResult):
            raise _fail(self._entry, "step()", f"returned {type(out).__name__}, expected an UpdateResult")
        omega = check_simplex(out.omega, self.num_peers, self._entry, "step()")
        info = {}
        for key, value in dict(out.info or {}).items():
            clean = jsonable(value)
            if clean is None and value is not None:
                note = (f"updater {self._entry.name!r} (plugin {self._entry.plugin!r}): info[{key!r}] of type "
                        f"{type(value).__name__} is not loggable (numbers, strings, lists and dicts of them); dropped")
                if note not in self._notes:
                    self._notes.append(note)
                continue
            info[str(key)] = clean
        grad = out.grad
        if grad is not None and (not isinstance(grad, Tensor) or tuple(grad.shape) != (self.num_peers,)):
            raise _fail(self._entry, "step()", f"grad must be None or a tensor of shape ({self.num_peers},)")
        eta = float(out.eta)
        val_loss = None if out.val_loss is None else float(out.val_loss)
        if val_loss is not None and not math.isfinite(val_loss):
            val_loss = None
        return UpdateResult(omega=omega, grad=grad, eta=eta, val_loss=val_loss, info=info)

    def state_dict(self) -> dict:
        return self._call("state_dict")

    def load_state_dict(self, state: dict) -> None:
        self._call("load_state_dict", state)

    def _call(self, method: str, *args):
        try:
            return getattr(self._updater, method)(*args)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
            if is_peer_failure(exc):     # another rank of the run went away: not this plugin's fault
                raise
            raise _fail(self._entry, f"{method}()", f"{type(exc).__name__}: {exc}") from exc


class GuardedInitializer:
    """An initializer whose ``check``/``build`` errors name the plugin. A ``ValueError`` stays one:
    it says the request cannot be met (a user's input), anything else is the plugin's fault."""

    def __init__(self, initializer: Any, entry: Entry):
        if not callable(getattr(initializer, "build", None)):
            raise _fail(entry, "factory", f"the object it made has no build() (see docs/plugins.md), got {initializer!r}")
        self._init, self._entry = initializer, entry
        if callable(getattr(initializer, "check", None)):
            self.check = self._check

    def __getattr__(self, name: str) -> Any:
        return getattr(self._init, name)

    def _check(self, *args, **kwargs):
        return self._call("check", *args, **kwargs)

    def build(self, teacher, family, targets, **kwargs) -> InitResult:
        out = self._call("build", teacher, family, targets, **kwargs)
        if not isinstance(out, InitResult):
            raise _fail(self._entry, "build()", f"returned {type(out).__name__}, expected an InitResult")
        if len(out.peers) != len(targets) or len(out.rows) != len(targets):
            raise _fail(self._entry, "build()", f"made {len(out.peers)} peers and {len(out.rows)} table rows "
                                                f"for {len(targets)} targets")
        return out

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self._init, method)(*args, **kwargs)
        except (PluginError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
            if is_peer_failure(exc):     # another rank of the run went away: not this plugin's fault
                raise
            raise _fail(self._entry, f"{method}()", f"{type(exc).__name__}: {exc}") from exc


def checked_initializer(initializer: Any, entry: Entry) -> GuardedInitializer:
    return initializer if isinstance(initializer, GuardedInitializer) else GuardedInitializer(initializer, entry)


def checked_loss(loss: Any, entry: Entry) -> GuardedLoss:
    return loss if isinstance(loss, GuardedLoss) else GuardedLoss(loss, entry)


def checked_updater(updater: Any, entry: Entry, num_peers: int) -> GuardedUpdater:
    return updater if isinstance(updater, GuardedUpdater) else GuardedUpdater(updater, entry, num_peers)


class GuardedObjective:
    """An objective plugin whose declarations are checked when it is made and whose batches are
    checked on every call (shapes, integer ids, labels in the vocabulary or ignored); errors name
    the plugin. Its attributes are forwarded; anything else it has is reached through it."""

    def __init__(self, objective: Any, entry: Entry):
        self._objective, self._entry = objective, entry
        problems = []
        if getattr(objective, "head", None) not in HEADS:
            problems.append(f"`head` must be one of {', '.join(HEADS)} (got {getattr(objective, 'head', None)!r})")
        if getattr(objective, "scoring", None) not in SCORINGS:
            problems.append(f"`scoring` must be one of {', '.join(SCORINGS)} (got {getattr(objective, 'scoring', None)!r})")
        attentions = tuple(getattr(objective, "attentions", ()) or ())
        if not attentions or any(a not in ATTENTIONS for a in attentions):
            problems.append(f"`attentions` must name some of {', '.join(ATTENTIONS)} (got {attentions!r})")
        if getattr(objective, "eval_attention", None) not in attentions:
            problems.append(f"`eval_attention` must be one of its `attentions` (got {getattr(objective, 'eval_attention', None)!r})")
        for name in ("batch", "attention"):
            if not callable(getattr(objective, name, None)):
                problems.append(f"it has no method `{name}`")
        if not isinstance(getattr(objective, "needs_mask_token", None), bool):
            problems.append("`needs_mask_token` must be True or False")
        if problems:
            raise _fail(entry, "factory", "the object it made is not an objective (see docs/objectives.md): "
                                          + "; ".join(problems))
        self.head, self.scoring, self.attentions = objective.head, objective.scoring, attentions
        self.eval_attention, self.needs_mask_token = objective.eval_attention, objective.needs_mask_token
        self.loss_name = str(getattr(objective, "loss_name", "") or "held-out loss")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)

    def attention(self, step: int) -> str:
        try:
            out = self._objective.attention(step)
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
            raise _fail(self._entry, "attention()", f"{type(exc).__name__}: {exc}") from exc
        if out not in self.attentions:
            raise _fail(self._entry, "attention()", f"returned {out!r} for step {step}, not one of its attentions "
                                                    f"{self.attentions}")
        return out

    def batch(self, block, step, gen, tokens):
        try:
            out = self._objective.batch(block, step, gen, tokens)
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
            raise _fail(self._entry, "batch()", f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
            raise _fail(self._entry, "batch()", f"must return (inputs, labels), two tensors; got {type(out).__name__}")
        x, y = out
        want = (block.shape[0], block.shape[1] - 1)
        for what, t in (("inputs", x), ("labels", y)):
            if tuple(t.shape) != want:
                raise _fail(self._entry, "batch()", f"{what} have shape {tuple(t.shape)}; expected {want} for a block "
                                                    f"of shape {tuple(block.shape)}")
            if t.dtype != torch.long:
                raise _fail(self._entry, "batch()", f"{what} must be token ids (torch.long), got {t.dtype}")
        vocab = tokens.vocab_size if tokens is not None else None
        if vocab is not None and x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
            raise _fail(self._entry, "batch()", f"inputs hold ids outside the vocabulary [0, {vocab})")
        labelled = y[y != IGNORE_INDEX]
        if vocab is not None and labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= vocab):
            raise _fail(self._entry, "batch()", f"labels hold ids outside the vocabulary [0, {vocab}) "
                                                f"(use {IGNORE_INDEX} for positions not scored)")
        return x, y


def checked_objective(objective: Any, entry: Entry) -> GuardedObjective:
    return objective if isinstance(objective, GuardedObjective) else GuardedObjective(objective, entry)
