"""The plugin contract: every type a plugin receives or returns, and the Protocol of each plugin kind.

Over 400 lines on purpose: the whole contract in one file, so a plugin author reads one module.

Kept free of implementations: the trainer, the verifier and third-party plugins all program
against these shapes, and nothing here imports ``wml_plugins``. Tensors follow the causal-LM
convention: logits are ``(batch, time, vocab)``, labels ``(batch, time)`` aligned with them
(already shifted), and a label of ``IGNORE_INDEX`` marks a position that is neither scored nor
counted. ``docs/plugins.md`` documents each type field by field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["IGNORE_INDEX", "Batch", "is_hf_model", "peer_logits", "LossResult", "Loss", "FastPathLoss",
           "OuterContext", "AdamPreconditioner", "InnerGradients", "UpdateResult", "Updater",
           "uniform_omega", "shape_string", "ModelFamily", "SizableFamily", "Axis", "PrunableFamily",
           "InitResult", "Initializer", "table_row", "peer_targets", "Evaluator", "Event", "Option",
           "LossProblem", "OuterProblem", "ReferencePoint"]

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- batches and logits

@dataclass
class Batch:
    """Model inputs and aligned labels.

    ``inputs`` is one tensor of token ids shared by all peers, or a list with one entry per peer
    (peers with different input spaces, e.g. the linear peers ``wml verify`` uses). Always take a
    peer's inputs with ``for_peer(i)``: it works for both layouts.
    """

    inputs: Union[Tensor, list]
    labels: Tensor

    @property
    def per_peer(self) -> bool:
        return isinstance(self.inputs, (list, tuple))

    def for_peer(self, i: int) -> Any:
        return self.inputs[i] if self.per_peer else self.inputs

    def to(self, device) -> "Batch":
        inputs = [x.to(device) for x in self.inputs] if self.per_peer else self.inputs.to(device)
        return Batch(inputs, self.labels.to(device))


def is_hf_model(model: nn.Module) -> bool:
    """A Hugging Face model (it has a config and can generate) rather than a plain module."""
    return hasattr(model, "config") and hasattr(model, "generate")


def peer_logits(model: nn.Module, inputs: Any, attention_mask: Optional[Tensor] = None) -> Tensor:
    """Logits of a Hugging Face causal LM (``.logits`` of its output), of a plain module, or of any
    module that returns a tensor (an ensemble). The one way the core calls a model.

    A model on another device than its inputs (``peer_placement = "spread"``) gets them moved to
    its own device, and its logits come back on the inputs' device (differentiably)."""
    if isinstance(inputs, (list, tuple)):
        raise TypeError("peer_logits() got a list of per-peer inputs; take one peer's inputs with "
                        "batch.for_peer(i)")
    origin = inputs.device if isinstance(inputs, Tensor) else None
    home = _device_of(model)
    if origin is not None and home is not None and home != origin:
        inputs = inputs.to(home)
        attention_mask = None if attention_mask is None else attention_mask.to(home)
    if is_hf_model(model):
        out = model(input_ids=inputs, attention_mask=attention_mask, use_cache=False)
    elif attention_mask is not None:
        out = model(inputs, attention_mask=attention_mask)
    else:
        out = model(inputs)
    logits = out if isinstance(out, Tensor) else out.logits
    return logits if origin is None or logits.device == origin else logits.to(origin)


def _device_of(model: nn.Module):
    for t in model.parameters():
        return t.device
    return None


# ----------------------------------------------------------------------------- losses

@dataclass
class LossResult:
    """What a loss returns.

    ``total`` is Σ_i L_i, the scalar the inner step differentiates; ``per_peer`` (M,) are the
    L_i (``total`` must equal their sum). ``ce`` (M,) and ``kl`` (M,) are what the run logs as
    each peer's CE and KL: for a loss that is not built from cross-entropy and a KL, put the
    data-fit part in ``ce`` and the part that comes from other models in ``kl`` (zeros if none).
    """

    total: Tensor
    per_peer: Tensor
    ce: Tensor
    kl: Tensor


@runtime_checkable
class Loss(Protocol):
    """An inner-loop loss: differentiable in the peers' logits and in ω.

    ``needs_teacher``: whether it reads ``teacher_logits`` (then the trainer computes them).
    """

    needs_teacher: bool

    def __call__(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                 teacher_logits: Optional[Tensor] = None) -> LossResult: ...


@runtime_checkable
class FastPathLoss(Loss, Protocol):
    """A loss with closed forms that make the exact hypergradient cheaper (both optional).

    ``logit_grads``: ∂total/∂z_i for each peer (shaped like its logits, zero at ignored
    positions), without computing the values. ``mixed_omega_grad``: ∂/∂ω Σ_i ⟨∂total/∂z_i, ż_i⟩
    for given tangents ż, shape (M,); ``logit_grads`` (if passed) are ∂total/∂z at the same point.
    ``mixed_from_logit_grads = True`` promises that ``mixed_omega_grad`` needs no logits (the
    hypergradient then passes ``logits=None`` and frees them early).
    """

    mixed_from_logit_grads: bool

    def logit_grads(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                    teacher_logits: Optional[Tensor] = None) -> list[Tensor]: ...

    def mixed_omega_grad(self, logits: Optional[Sequence[Tensor]], labels: Tensor, omega: Tensor,
                         tangents: Sequence[Tensor], teacher_logits: Optional[Tensor] = None,
                         logit_grads: Optional[Sequence[Tensor]] = None) -> Tensor: ...


# ----------------------------------------------------------------------------- updaters

@dataclass
class OuterContext:
    """Everything an updater may use for one outer step.

    ``peers``: the M models (in train mode; leave them as found). ``loss``: the run's loss object.
    ``omega``: current ω, float64 (M,). ``train``: the micro-batch of the inner step just taken.
    ``val``: a held-out batch (the ω half of the held-out split). ``inner_lr``: γ, the learning
    rate of that inner step. ``outer_step``: outer updates so far, from 0 (drives schedules).
    ``teacher_logits``: the teacher's logits on ``train`` when the loss needs them, else None.
    ``forward(peer, inputs) -> logits``: how to call a peer (use ``batch.for_peer(i)``).
    ``inner``: what the inner step already computed on ``train`` at the peers' current weights
    (see :class:`InnerGradients`), or None. The trainer runs the outer step after the inner
    step's backward and before its optimizer step, so ``peers`` hold the weights that step
    started from. ``reduce_mean(tensors)``: averages tensors in place over the processes of a
    data-parallel run (each holds a share of ``train`` and ``val``; the identity in one process):
    apply it to every gradient and loss computed from a batch, so that all processes take the
    same ω step. ``preconditioner``: how the optimizer will move each parameter along this step's
    gradient (see :class:`AdamPreconditioner`), offered to an updater whose
    ``uses_preconditioner`` is True, else None.
    """

    peers: Sequence[nn.Module]
    loss: Loss
    omega: Tensor
    train: Batch
    val: Batch
    inner_lr: float
    outer_step: int
    teacher_logits: Optional[Tensor] = None
    forward: Callable[[nn.Module, Any], Tensor] = peer_logits
    inner: Optional["InnerGradients"] = None
    reduce_mean: Callable[[Sequence[Optional[Tensor]]], None] = lambda tensors: None
    preconditioner: Optional["AdamPreconditioner"] = None


@dataclass
class AdamPreconditioner:
    """The diagonal preconditioner of the optimizer step about to be taken (method.md §4, Adam-aware).

    AdamW moves a parameter by ``inner_lr · diag ⊙ g`` in its current gradient g, plus terms that do
    not depend on g (momentum, weight decay): ``diag = c (1−β1)/(1−β1^t) / (√v̂_t + ε)``, with v̂_t
    the bias-corrected second moment including this step's gradient and c the gradient-clipping
    factor of this step, all held constant. ``diag[i]`` lists one tensor per trainable parameter of
    peer i, in ``parameters()`` order (None where a parameter has no gradient this step).
    """

    diag: list


@dataclass
class InnerGradients:
    """The inner step's own results on ``OuterContext.train``, so an updater need not recompute them.

    Offered only to an updater whose ``uses_inner_gradients`` is True, and only when the peers'
    forward is deterministic (no dropout), so these are exactly what a fresh computation in eval
    mode would give (up to the autocast precision of the inner step). All detached:

    ``grads[i]``: ∇_θ of the loss total for peer i on that micro-batch, one tensor (or None) per
    parameter of ``[p for p in peer.parameters() if p.requires_grad]``, before clipping.
    ``logits[i]``: peer i's logits. ``logit_grads[i]``: ∂total/∂logits[i].
    ``tangents(v)``: ż_i = J_i v_i for every peer, where ``v`` lists one tensor per trainable
    parameter of all peers in order (None where a parameter has no gradient): a backward
    through this step's own backward, cheaper than forward mode. Usable once.
    """

    grads: list
    logits: list
    logit_grads: list
    tangents: Optional[Callable[[list], list]] = None


@dataclass
class UpdateResult:
    """What an updater's ``step`` returns.

    ``omega``: the new ω, a float64 point of the simplex of shape (M,) (checked by the trainer).
    ``grad``: the gradient it stepped along, if any (logged). ``eta``: its step size (logged).
    ``val_loss``: the ensemble's loss on the held-out batch, if the updater computed it (logged
    as the ω-batch loss and plotted by the report). ``info``: extra values to log; scalars,
    strings or lists of numbers, logged under ``info`` in the ``outer`` record of ``metrics.jsonl``.
    """

    omega: Tensor
    grad: Optional[Tensor] = None
    eta: float = 0.0
    val_loss: Optional[float] = None
    info: dict = field(default_factory=dict)


@runtime_checkable
class Updater(Protocol):
    """Moves ω on the simplex.

    ``needs_validation``: True if ``step`` uses held-out data; an updater that says False is
    never stepped in a run (its ω stays ``initial_omega()``), and ``wml verify`` checks exactly that.
    """

    needs_validation: bool

    def initial_omega(self) -> Tensor: ...

    def step(self, ctx: OuterContext) -> UpdateResult: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def uniform_omega(num_peers: int, dtype=torch.float64) -> Tensor:
    return torch.full((num_peers,), 1.0 / num_peers, dtype=dtype)


# ----------------------------------------------------------------------------- model families

def shape_string(shape: Mapping[str, int]) -> str:
    """``L4·H4·d32·F512`` (plus ``·E<hidden>`` when hidden ≠ heads × head size): the one way every
    table, summary and log names an architecture."""
    text = f"L{shape['n_layer']}·H{shape['n_head']}·d{shape['head_dim']}·F{shape['ffn']}"
    hidden = shape.get("hidden", shape["n_head"] * shape["head_dim"])
    if hidden != shape["n_head"] * shape["head_dim"]:
        text += f"·E{hidden}"
    return text


@runtime_checkable
class ModelFamily(Protocol):
    """An architecture the core can build, count and name (what teacher training and the run need).

    ``model_type`` is matched against a Hugging Face config's ``model_type``. ``shape(config)``
    returns ``{n_layer, n_head, head_dim, hidden, ffn}``. ``make_config`` builds a standard
    Hugging Face config of a shape (everything else copied from ``base`` when given).
    """

    name: str
    model_type: str

    def count_parameters(self, config) -> int: ...

    def make_config(self, *, vocab_size: int, n_layer: int, n_head: int, head_dim: int, ffn: int,
                    max_positions: int, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                    base=None, hidden=None, n_kv_head=None): ...

    def shape(self, config) -> dict: ...

    def shape_string(self, config) -> str: ...

    def default_ffn(self, hidden: int) -> int: ...

    def max_positions(self, config) -> int: ...


@runtime_checkable
class SizableFamily(ModelFamily, Protocol):
    """A family the ``bayes`` initializer can size: a vectorised exact count over shapes."""

    head_dim_multiple: int

    def count_shapes(self, base, *, n_layer, n_head, head_dim, ffn, hidden=None, n_kv_head=None): ...


@dataclass(frozen=True)
class Axis:
    """One tensor axis that belongs to a prunable unit (the ``l1`` initializer's contract).

    The axis is laid out as ``[repeat, units, width]``: ``repeat`` copies (3 for GPT-2's fused
    q/k/v projection) of ``units`` blocks of ``width`` contiguous entries each (a head's
    ``head_dim`` entries). ``unit`` is ``head``, ``neuron`` or ``hidden``; ``layer`` is None for
    the hidden (residual) unit, which every layer shares.
    """

    unit: str
    layer: Optional[int] = None
    repeat: int = 1
    width: int = 1

    def positions(self, keep: np.ndarray, n_units: int) -> np.ndarray:
        """Entries of the axis that survive when the units ``keep`` are kept (in order)."""
        keep = np.asarray(keep, dtype=np.int64)
        block = (keep[:, None] * self.width + np.arange(self.width)[None, :]).reshape(-1)
        reps = np.arange(self.repeat)[:, None] * (n_units * self.width)
        return (reps + block[None, :]).reshape(-1)


@runtime_checkable
class PrunableFamily(SizableFamily, Protocol):
    """A family the ``l1`` initializer can prune: which tensor axes belong to which unit."""

    hidden_follows_heads: bool

    def prunable_axes(self, config) -> dict: ...

    def head_group(self, config) -> int: ...

    def unit_counts(self, config) -> dict: ...

    def count_pruned(self, config, *, n_layer, head_units, ffn, hidden): ...

    def pruned_config(self, config, *, n_layer, head_units, ffn, hidden): ...

    def layer_of(self, param_name: str) -> Optional[int]: ...

    def rename_layer(self, param_name: str, new_index: int) -> str: ...


# ----------------------------------------------------------------------------- initializers

@dataclass
class InitResult:
    """Peers built by an initializer, the table it reports and its search/pruning trace.

    ``rows``: one dict per peer with ``peer`` (index), ``shape`` (:func:`shape_string`),
    ``parameters``, ``target`` and ``rel_error``. ``trace``: JSON-serialisable records of every
    search probe or pruning decision (written to ``init_trace.json``).
    """

    peers: list
    rows: list = field(default_factory=list)
    trace: list = field(default_factory=list)


@runtime_checkable
class Initializer(Protocol):
    """Builds peers from a teacher. ``check`` rejects a request before any work (optional)."""

    def build(self, teacher: nn.Module, family: ModelFamily, targets: list, *,
              calibration: Optional[Batch] = None, seed: int = 0) -> InitResult: ...


def table_row(peer: int, shape: str, parameters: int, target: int) -> dict:
    """One row of ``init_table.json`` (and of :class:`InitResult`'s ``rows``)."""
    return dict(peer=int(peer), shape=shape, parameters=int(parameters), target=int(target),
                rel_error=abs(int(parameters) - int(target)) / int(target))


def peer_targets(n_teacher: int, num_peers: Optional[int], fractions: Optional[Sequence[float]] = None) -> list[int]:
    """Parameter-count targets of the peers: N/2, N/3, …, N/(M+1) (method.md §1), or the given
    fractions of N (each in (0, 1); ``num_peers`` must then be None or their number)."""
    if int(n_teacher) < 1:
        raise ValueError(f"the teacher must have at least one parameter, got {n_teacher}")
    if fractions:
        fractions = [float(f) for f in fractions]
        bad = [f for f in fractions if not 0.0 < f < 1.0]
        if bad:
            raise ValueError(f"peer fractions must lie in (0, 1); got {bad}")
        if num_peers is not None and int(num_peers) != len(fractions):
            raise ValueError(f"{num_peers} peers requested but {len(fractions)} peer fractions given")
        return [max(1, round(n_teacher * f)) for f in fractions]
    if num_peers is None or int(num_peers) < 1:
        raise ValueError(f"the number of peers M must be at least 1, got {num_peers}")
    return [max(1, round(n_teacher / (i + 2))) for i in range(int(num_peers))]


# ----------------------------------------------------------------------------- evaluators

@runtime_checkable
class Evaluator(Protocol):
    """Scores one model (a Hugging Face causal LM or an ensemble that returns logits).

    Returns a JSON-serialisable dict, stored under the evaluator's name in ``eval.json``. A call
    that accepts a ``name`` keyword also receives the model's name (``peer_0``, ``ensemble``,
    ``teacher``, or a model folder's name). Optional methods: ``summary() -> dict`` (facts shared by
    every model, stored at the top level of ``eval.json`` under the evaluator's name),
    ``warnings() -> list[str]`` (printed once), ``columns(result)`` and ``details(results)`` (how it
    reads in a table). The factory returns None when the configuration gives it nothing to score.
    """

    def __call__(self, model: nn.Module, tokenizer, *, device=None, progress: Optional[bool] = None,
                 desc: Optional[str] = None) -> dict: ...


# ----------------------------------------------------------------------------- run events

class Event(str, enum.Enum):
    """What a run reports, to ``wml_run_event`` observers and to callbacks. An event of a logged
    record has the record's ``kind`` as its name (``train``, ``outer``, ``eval``); ``phase`` says
    which stage of ``wml run`` begins (``data``, ``teacher``, ``peers``, ``training``, ``export``,
    ``evaluation``, ``report``)."""

    PHASE = "phase"
    RUN_START = "run_start"
    TRAIN = "train"
    OUTER = "outer"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    RUN_END = "run_end"

    def __str__(self) -> str:
        return self.value


# ----------------------------------------------------------------------------- plugin options

@dataclass(frozen=True)
class Option:
    """A setting a plugin declares when it registers: set by ``--set NAME.KEY=VALUE`` or a
    ``[plugins.NAME]`` TOML table, validated before any work, passed to the factory as the
    keyword argument ``KEY``.

    ``kind`` is int, float, str, bool or list (of numbers); it defaults to the type of
    ``default``. ``low``/``high`` bound numbers (``low_open``/``high_open`` exclude the bound);
    ``choices`` lists the allowed values.
    """

    key: str
    default: Any
    help: str = ""
    kind: Optional[type] = None
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[Sequence[Any]] = None

    @property
    def type(self) -> type:
        return self.kind or type(self.default)


# ----------------------------------------------------------------------------- reference points

@dataclass
class LossProblem:
    """A random loss problem, as float64 NumPy arrays, handed to a loss's reference points.

    ``logits``: M arrays (B, T, V); ``labels``: (B, T) with -100 at ignored positions; ``omega``:
    (M,) on the simplex; ``teacher``: (B, T, V); ``config``: the WMLConfig the loss was made with;
    ``options``: the plugin's own options for this point.
    """

    logits: list
    labels: np.ndarray
    omega: np.ndarray
    teacher: np.ndarray
    config: Any
    options: dict


@dataclass
class OuterProblem:
    """A random outer-step problem with linear peers z_i = x_i W_i, handed to an updater's
    reference points (float64 NumPy arrays).

    ``x_train``/``x_val``: M arrays (n, d_i); ``y_train``/``y_val``: (n,); ``weights``: M arrays
    (d_i, V) (the peers' parameters); ``omega``: (M,); ``inner_lr``: γ; ``outer_step``;
    ``config`` (its ``loss_alpha``/``temperature`` are those of the run's loss); ``options``;
    ``preconditioner``: M positive arrays shaped like ``weights``, the ``diag`` of the context's
    :class:`AdamPreconditioner` (in the NumPy layout of ``weights``).
    """

    x_train: list
    y_train: np.ndarray
    x_val: list
    y_val: np.ndarray
    weights: list
    omega: np.ndarray
    inner_lr: float
    outer_step: int
    config: Any
    options: dict
    preconditioner: Optional[list] = None


@dataclass(frozen=True)
class ReferencePoint:
    """Something a plugin promises to equal, which ``wml verify`` checks on random problems.

    ``expected(problem)`` returns the values the plugin must produce, as NumPy arrays or floats:
    for a loss, any of ``per_peer``, ``ce``, ``kl``, ``total``, ``grad_logits`` (a list, ∂total/∂z_i
    with ω constant) and ``grad_omega`` (∂total/∂ω); for an updater, any of ``omega``, ``grad``,
    ``eta`` and ``info`` (a dict whose items must appear in ``UpdateResult.info``). ``settings``:
    config keys and this plugin's options (``"gamma"`` or ``"name.gamma"``) applied before the
    plugin is made. Verify compares within ``tolerance`` (relative to the largest magnitude).
    """

    name: str
    expected: Callable[[Any], dict]
    settings: Mapping[str, Any] = field(default_factory=dict)
    tolerance: float = 1e-8
