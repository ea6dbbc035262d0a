"""The plugin contract: every type a plugin receives or returns, and the Protocol of each plugin kind.

Over 400 lines on purpose: the whole contract in one file, so a plugin author reads one module.

Kept free of implementations but for what the contract itself defines, which every plugin and
the core must compute alike: how a peer is called, which tokens are scored, and the outer
objective L_2 that ω is tuned to lower (:func:`ensemble_loss`). The trainer, the verifier and
third-party plugins all program against these, and nothing here imports ``wml_plugins``.
Tensors follow the causal-LM convention: logits are ``(batch, time, vocab)``, labels
``(batch, time)`` aligned with them (already shifted), and a label of ``IGNORE_INDEX`` marks a
position that is neither scored nor counted. ``docs/plugins.md`` documents each type field by field.
"""

from __future__ import annotations

import contextlib
import enum
import functools
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Union,
    runtime_checkable,
)

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["IGNORE_INDEX", "Batch", "is_hf_model", "CAUSAL", "BIDIRECTIONAL", "ATTENTIONS", "native_attention",
           "attending", "attention_bias", "model_class", "build_model", "TokenInfo", "Objective", "peer_logits", "trainable_parameters", "LossResult", "Loss",
           "FastPathLoss", "ScoredLogits", "scored_logits", "unscore", "omega_vector", "rowdot", "full_precision",
           "autocast_off", "ensemble_loss", "ensemble_loss_parts",
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


# ----------------------------------------------------------------------------- models and attention

#: how a position may attend: to itself and earlier positions (``CAUSAL``) or to every position
CAUSAL, BIDIRECTIONAL = "causal", "bidirectional"
ATTENTIONS = (CAUSAL, BIDIRECTIONAL)
#: the module attribute :func:`attending` sets and :func:`peer_logits` reads
_ATTENTION_ATTR = "wml_attention"


def _masked_lm_classes() -> set:
    from transformers import MODEL_FOR_MASKED_LM_MAPPING

    return set(MODEL_FOR_MASKED_LM_MAPPING.values())


def native_attention(model: nn.Module) -> str:
    """How ``model`` attends when called plainly: what its ``wml_native_attention`` attribute says
    (a wrapper of other models, like an ensemble, says its members'), else ``BIDIRECTIONAL`` for a
    Hugging Face masked LM (an encoder such as RoBERTa), ``CAUSAL`` for everything else."""
    declared = getattr(model, "wml_native_attention", None)
    if declared in ATTENTIONS:
        return declared
    return BIDIRECTIONAL if type(model) in _masked_lm_classes() else CAUSAL


@contextlib.contextmanager
def attending(models: Sequence[nn.Module], attention: Optional[str]):
    """Within the block, :func:`peer_logits` calls each of ``models`` with ``attention``
    (``CAUSAL`` or ``BIDIRECTIONAL``; None: each model's own). How an objective that mixes both
    (``hybrid``) makes one model attend both ways; the previous setting is restored on exit."""
    if attention is not None and attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, not {attention!r}")
    before = [getattr(m, _ATTENTION_ATTR, None) for m in models]
    try:
        for m in models:
            object.__setattr__(m, _ATTENTION_ATTR, attention)
        yield
    finally:
        for m, b in zip(models, before):
            object.__setattr__(m, _ATTENTION_ATTR, b)


def attention_bias(model: nn.Module, inputs: Tensor) -> Optional[Tensor]:
    """The additive 4-D mask ``(B, 1, T, T)`` (0 where a position may attend, the dtype's minimum
    where not) that makes ``model`` attend as :func:`attending` asked, or None where that is how
    it attends anyway. Hugging Face models take such a float mask in place of a padding mask."""
    wanted = getattr(model, _ATTENTION_ATTR, None)
    if wanted is None or wanted == native_attention(model):
        return None
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    b, t = inputs.shape[0], inputs.shape[-1]
    bias = torch.zeros(t, t, dtype=dtype, device=inputs.device)
    if wanted == CAUSAL:
        future = torch.ones(t, t, dtype=torch.bool, device=inputs.device).triu(1)
        bias = bias.masked_fill(future, torch.finfo(dtype).min)
    return bias.expand(b, 1, t, t)


def model_class(config):
    """The Hugging Face class of a model of ``config``: the one its ``architectures`` names, else the
    masked-LM class of an encoder (a model type with a masked-LM class whose config is not a
    decoder: RoBERTa, BERT, DeBERTa-v2), else the causal-LM class. Every model wml builds or
    loads goes through here, so that peers have the teacher's kind of head."""
    import transformers
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None and (cls in set(MODEL_FOR_CAUSAL_LM_MAPPING.values()) or cls in _masked_lm_classes()):
            return cls
    kind = type(config)
    if kind in MODEL_FOR_MASKED_LM_MAPPING and not getattr(config, "is_decoder", False):
        return MODEL_FOR_MASKED_LM_MAPPING[kind]
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING:
        return MODEL_FOR_CAUSAL_LM_MAPPING[kind]
    if kind in MODEL_FOR_MASKED_LM_MAPPING:
        return MODEL_FOR_MASKED_LM_MAPPING[kind]
    raise ValueError(f"model_type {getattr(config, 'model_type', None)!r} has neither a causal-LM nor a "
                     "masked-LM class in transformers")


def build_model(config) -> nn.Module:
    """A freshly initialised model of ``config`` (of :func:`model_class`), in the default dtype;
    on the ``meta`` device when built inside ``torch.device("meta")`` (counting without memory)."""
    cls = model_class(config)
    return cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)


# ----------------------------------------------------------------------------- objectives

@dataclass(frozen=True)
class TokenInfo:
    """What an objective needs to know of the tokenizer: the vocabulary size, the mask token (None
    if it has none) and the ids it must never mask or draw as random replacements (BOS, EOS, pad …)."""

    vocab_size: int
    mask_token_id: Optional[int] = None
    special_ids: tuple = ()

    @classmethod
    def of(cls, tokenizer, vocab_size: Optional[int] = None) -> "TokenInfo":
        """The token facts of a Hugging Face tokenizer (``vocab_size``: if larger; alone when there is
        no tokenizer, as for synthetic token streams)."""
        if tokenizer is None:
            return cls(int(vocab_size or 0))
        n = max(len(tokenizer), int(vocab_size or 0))
        return cls(n, getattr(tokenizer, "mask_token_id", None), tuple(sorted(set(tokenizer.all_special_ids))))


@runtime_checkable
class Objective(Protocol):
    """How a block of tokens becomes a model's inputs and labels (the causal shift, BERT masking …).

    ``head``: the Hugging Face head its models have, ``"causal"`` (``AutoModelForCausalLM``) or
    ``"masked"`` (``AutoModelForMaskedLM``). ``needs_mask_token``: True if it writes the tokenizer's
    mask token into inputs (a run whose tokenizer has none is refused before any work).
    ``attentions``: the attentions it asks for (``CAUSAL``, ``BIDIRECTIONAL``): a model that cannot
    attend in one of them is refused before any work. ``scoring``: how minimal pairs are scored for
    its models, ``"causal"`` (sum of next-token log-probabilities), ``"mlm"`` (pseudo-log-likelihood:
    each token masked in turn) or ``"mntp"`` (each token masked in turn, predicted from the position
    before it), as the BabyLM 2025 pipeline's backends of those names. ``loss_name``: what its
    held-out loss is called in reports (``next-token loss``, ``masked-token loss``).

    ``attention(step)``: the attention of optimizer step ``step`` (the same for all its micro-batches
    and its outer step); ``eval_attention``: the attention of held-out evaluation.
    ``batch(block, step, gen, tokens)``: from ``block`` (B, T+1) of token ids, the inputs (B, T) and
    labels (B, T) of step ``step`` (``IGNORE_INDEX`` where a position is not scored; labels aligned with
    the logits, already shifted where the objective predicts the next token). Random choices come
    from ``gen`` only (a run's resume repeats them exactly); ``step`` is -1 for held-out evaluation.
    """

    head: str
    needs_mask_token: bool
    attentions: tuple
    scoring: str
    loss_name: str
    eval_attention: str

    def attention(self, step: int) -> str: ...

    def batch(self, block: Tensor, step: int, gen: torch.Generator, tokens: TokenInfo) -> tuple[Tensor, Tensor]: ...


def peer_logits(model: nn.Module, inputs: Any, attention_mask: Optional[Tensor] = None) -> Tensor:
    """Logits of a Hugging Face causal LM (``.logits`` of its output), of a plain module, or of any
    module that returns a tensor (an ensemble). The one way the core calls a model.

    A model on another device than its inputs (``peer_placement = "spread"``) gets them moved to
    its own device, and its logits come back on the inputs' device (differentiably). Inside
    :func:`attending`, a model asked to attend otherwise than it does by itself gets the
    :func:`attention_bias` that makes it (when no ``attention_mask`` is given)."""
    if isinstance(inputs, (list, tuple)):
        raise TypeError("peer_logits() got a list of per-peer inputs; take one peer's inputs with "
                        "batch.for_peer(i)")
    origin = inputs.device if isinstance(inputs, Tensor) else None
    if attention_mask is None and isinstance(inputs, Tensor):
        attention_mask = attention_bias(model, inputs)
    home = _device_of(model)
    if origin is not None and home is not None and home != origin:
        inputs = inputs.to(home)
        attention_mask = None if attention_mask is None else attention_mask.to(home)
    if is_hf_model(model):
        cache = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
        out = model(input_ids=inputs, attention_mask=attention_mask, **cache)
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


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train (``requires_grad``), by name, in ``parameters()`` order: the order
    of :class:`InnerGradients`' ``grads`` and :class:`AdamPreconditioner`'s ``diag``, so an updater
    can pair those lists with the peer's own tensors."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


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

    ``needs_teacher`` (required): whether it reads ``teacher_logits`` (then the trainer computes
    them on every batch, and a run without a teacher is refused).
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
    hypergradient then passes ``logits=None`` and frees them early); absent means False.
    """

    mixed_from_logit_grads: bool = False

    def logit_grads(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                    teacher_logits: Optional[Tensor] = None) -> list[Tensor]: ...

    def mixed_omega_grad(self, logits: Optional[Sequence[Tensor]], labels: Tensor, omega: Tensor,
                         tangents: Sequence[Tensor], teacher_logits: Optional[Tensor] = None,
                         logit_grads: Optional[Sequence[Tensor]] = None) -> Tensor: ...


# ----------------------------------------------------------------------------- scored tokens
# What every loss and the outer objective must agree on: a mean over scored tokens (labels of
# IGNORE_INDEX neither scored nor counted), softmaxes in float32 at least (bf16 logits of ±1e4 stay
# finite), logits of shape (B, T, V) or (n, V). Loss plugins may use these helpers; the built-ins do.

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything narrower (bf16, fp16, float32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class ScoredLogits:
    """The peers' logits restricted to scored rows, in compute precision.

    ``logits[i]`` is ``(n, V)`` with ``n`` the number of scored tokens, ``labels`` is ``(n,)``;
    ``n_scored`` is the divisor of every token mean (at least 1, so an all-ignored batch gives 0).
    """

    logits: list
    labels: Tensor
    n_scored: int
    dtype: torch.dtype


def _scored_rows(labels: Tensor) -> Optional[Tensor]:
    """Flat index of the scored rows, or None when every row is scored (no copy needed)."""
    mask = labels.reshape(-1) != IGNORE_INDEX
    if bool(mask.all()):
        return None
    return mask.nonzero().squeeze(-1)


def _check_labels(labels: Tensor, shape: torch.Size, who: str) -> None:
    if labels.shape != shape[:-1]:
        raise ValueError(f"{who}: labels of shape {tuple(labels.shape)} do not match logits of shape "
                         f"{tuple(shape)} (expected {tuple(shape[:-1])})")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{who}: labels must be integers, got {labels.dtype}")


def scored_logits(logits: Sequence[Tensor], labels: Tensor, who: str) -> ScoredLogits:
    """Flatten ``(…, V)`` logits to rows, keep the rows whose label is not -100, upcast.

    All peers must share one shape. The selection and the cast are differentiable, so
    gradients flow back to the caller's tensors (zero at ignored positions). ``who`` names the
    caller in errors.
    """
    if len(logits) == 0:
        raise ValueError(f"{who}: needs the logits of at least one peer")
    shape = logits[0].shape
    for i, z in enumerate(logits):
        if z.shape != shape:
            raise ValueError(f"{who}: peers disagree in shape: logits[0] is {tuple(shape)}, "
                             f"logits[{i}] is {tuple(z.shape)}")
    _check_labels(labels, shape, who)
    V = shape[-1]
    rows = _scored_rows(labels)
    flat_labels = labels.reshape(-1).long()
    dtype = _compute_dtype(logits[0].dtype)
    out = []
    for z in logits:
        z2 = z.reshape(-1, V)
        if rows is not None:
            z2 = z2.index_select(0, rows)
        out.append(z2.to(dtype))
    if rows is not None:
        flat_labels = flat_labels.index_select(0, rows)
    if flat_labels.numel() and (int(flat_labels.min()) < 0 or int(flat_labels.max()) >= V):
        raise ValueError(f"{who}: labels must lie in [0, {V}) or be {IGNORE_INDEX}")
    return ScoredLogits(out, flat_labels, max(int(flat_labels.numel()), 1), dtype)


def unscore(rows: Tensor, labels: Tensor, like: Tensor) -> Tensor:
    """Scored rows ``(n, V)`` back into the shape and dtype of ``like`` (zeros at ignored positions)."""
    V = like.shape[-1]
    if rows.shape[0] != labels.numel():
        keep = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)
        rows = torch.zeros(labels.numel(), V, dtype=rows.dtype, device=rows.device).index_copy_(0, keep, rows)
    return rows.view(like.shape).to(like.dtype)


def omega_vector(omega: Tensor, num_peers: int, like: Tensor, who: str) -> Tensor:
    """ω as a vector of length M in the dtype and on the device of ``like`` (a differentiable cast)."""
    omega = torch.as_tensor(omega)
    if omega.shape != (num_peers,):
        raise ValueError(f"{who}: omega must have shape ({num_peers},), one weight per peer; "
                         f"got {tuple(omega.shape)}")
    return omega.to(device=like.device, dtype=like.dtype)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[t, v] · b[t, v] for every row t. ``vecdot`` (a fused multiply and row sum) runs about 1.6×
    faster on CPUs than the batched matrix-vector product ``bmm`` this once was, for rows of a
    vocabulary's length."""
    return torch.linalg.vecdot(a, b)


def full_precision(like: Tensor):
    """Autocast off for the block: a loss picks its own precision (float32 at least), and an
    enclosing bf16 autocast (the inner step's, on CUDA) would otherwise run its reductions in bf16."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _first_tensor(values) -> Optional[Tensor]:
    for v in values:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], Tensor):
            return v[0]
    return None


def autocast_off(fn):
    """Decorator: run ``fn`` with autocast disabled on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        like = _first_tensor(list(args) + list(kwargs.values()))
        if like is None:
            return fn(*args, **kwargs)
        with full_precision(like):
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- the outer objective
# L_2 of method.md §4, what ω is tuned to lower: the cross-entropy of the ω-weighted logit ensemble,
#     z_ens(ω) = Σ_i ω_i z_i,   L_2 = CE(z_ens, y)   (token mean, labels of -100 ignored),
#     ∂L_2/∂z_i = ω_i G,   ∂L_2/∂ω_i = ⟨G, z_i⟩,   G = (softmax(z_ens) − onehot(y)) / n.
# Here so that every updater, built-in or not, optimises the same objective. A fused autograd
# Function (first-order only: the hypergradient never differentiates L_2 twice) keeps one (n, V)
# buffer instead of a chain of M temporaries; the mixture is formed in float32 at least.

def _ensemble_ce(zs: Sequence[Tensor], w: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(L_2, G) on scored rows, with G = (s_1(z_ens) − onehot(y))/n built in the mixture's own buffer."""
    z_ens = zs[0] * w[0]
    for i in range(1, len(zs)):
        z_ens.addcmul_(zs[i], w[i])
    zmax = z_ens.amax(dim=-1, keepdim=True)
    target = z_ens.gather(-1, labels.unsqueeze(-1))
    p = z_ens.sub_(zmax).exp_()
    total = p.sum(dim=-1, keepdim=True)
    p.div_(total)
    loss = (zmax + torch.log(total) - target).sum() / n
    G = p.mul_(1.0 / n)
    G.scatter_add_(-1, labels.unsqueeze(-1), torch.full((labels.shape[0], 1), -1.0 / n, dtype=G.dtype, device=G.device))
    return loss, G


class _FusedEnsembleCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, labels: Tensor, n: int, *zs: Tensor):
        loss, G = _ensemble_ce(zs, w, labels, n)
        ctx.save_for_backward(w, G, *zs)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        w, G, *zs = ctx.saved_tensors
        with full_precision(G):
            G = G.mul_(g)                                   # in place: a second backward is refused
            grad_w = torch.stack([rowdot(G, z).sum() for z in zs]) if ctx.needs_input_grad[0] else None
            grads = [G * w[i] if ctx.needs_input_grad[3 + i] else None for i in range(len(zs))]
        return (grad_w, None, None, *grads)


@autocast_off
def ensemble_loss(logits: Sequence[Tensor], labels: Tensor, omega: Tensor) -> Tensor:
    """L_2 = CE(Σ_i ω_i z_i, y) over the scored tokens; differentiable (once) in ω and the logits."""
    scored = scored_logits(logits, labels, "ensemble loss")
    w = omega_vector(omega, len(scored.logits), scored.logits[0], "ensemble loss")
    return _FusedEnsembleCE.apply(w, scored.labels, scored.n_scored, *scored.logits)


@torch.no_grad()
@autocast_off
def ensemble_loss_parts(logits: Sequence[Tensor], labels: Tensor, omega: Tensor) -> tuple[float, Tensor, Tensor]:
    """(L_2, ∂L_2/∂ω, G) without autograd; G = ∂L_2/∂z_ens has the logits' shape and dtype.

    Why: ∂L_2/∂z_i = ω_i G, so a caller that back-propagates to each peer's parameters can pass
    the one tensor G to every peer and scale peer i's parameter gradient by ω_i afterwards,
    instead of materialising M products ω_i G of size (n, V).
    """
    scored = scored_logits([z.detach() for z in logits], labels, "ensemble loss")
    w = omega_vector(omega, len(scored.logits), scored.logits[0], "ensemble loss")
    loss, G = _ensemble_ce(scored.logits, w, scored.labels, scored.n_scored)
    grad_w = torch.stack([rowdot(G, z).sum() for z in scored.logits]).to(torch.as_tensor(omega).dtype)
    return float(loss), grad_w, unscore(G, labels, logits[0])


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
    (see :class:`InnerGradients`), offered to an updater whose ``uses_inner_gradients`` is True,
    else None. The outer objective the built-in ``mirror`` lowers is :func:`ensemble_loss` on
    ``val`` (L_2; :func:`ensemble_loss_parts` gives its gradients without autograd). The trainer
    runs the outer step after the inner step's backward and before its optimizer step, so
    ``peers`` hold the weights that step started from. ``reduce_mean(tensors)``: averages tensors
    in place over the processes of a data-parallel run (each holds a share of ``train`` and
    ``val``; the identity in one process):
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
    parameter of :func:`trainable_parameters` (peer), before clipping.
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

    ``needs_validation`` (required): True if ``step`` uses held-out data; an updater that says False
    is never stepped in a run (its ω stays ``initial_omega()``), and ``wml verify`` checks exactly that.

    Optional attributes (an updater without one gets the default given here; the run reads each
    through its guard, ``wml_framework.plugin_system.guards``):
    ``uses_inner_gradients`` (False): True asks for ``OuterContext.inner``, what the inner step
    computed on ``ctx.train`` (offered only when no peer has dropout). ``uses_preconditioner``
    (False): True asks for ``OuterContext.preconditioner``, AdamW's diagonal for the step being
    taken. ``notes`` (empty): messages the run logs once each as a warning (read after every outer
    step that succeeds, so an updater may add to it; a setting it ignores, a fallback it took).
    """

    needs_validation: bool
    uses_inner_gradients: bool = False
    uses_preconditioner: bool = False
    notes: Sequence[str] = ()

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
    ``choices`` lists the allowed values (for a list: the names it may hold, given as a TOML list or,
    on the command line, separated by commas).
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
