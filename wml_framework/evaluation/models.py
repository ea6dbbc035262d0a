"""Models as the scorers see them: one Hugging Face causal LM, or the ω-weighted logit ensemble
of a run's peers (:class:`EnsembleLM` looks like a model), plus loading and device helpers.

One code path scores both, so the trainer, ``wml eval`` and the evaluator plugins report numbers
computed the same way (method.md §4).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..api import ATTENTIONS, CAUSAL, model_class, native_attention, peer_logits

__all__ = ["DTYPES", "train_dtype", "EnsembleLM", "normalised_weights", "mix_logits", "count_parameters",
           "logits_attending", "model_device", "max_positions", "evaluating", "resolve_device", "load_model"]


#: the ``dtype`` config key's values
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def train_dtype(cfg) -> torch.dtype:
    """The weights' dtype of a run (config key ``dtype``)."""
    return DTYPES[cfg.dtype]


class EnsembleLM(nn.Module):
    """The ω-weighted logit ensemble z_ens = Σ_i ω_i z_i of models sharing one vocabulary.

    ``forward(input_ids, attention_mask)`` returns the mixed logits (a tensor), so an ensemble
    is scored exactly like one model; log_softmax of them is the ensemble's distribution."""

    def __init__(self, models: Sequence[nn.Module], omega: Sequence[float] | Tensor | np.ndarray):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = nn.ModuleList(models)
        self.register_buffer("omega", normalised_weights(omega, len(models)))
        #: members attend alike; an attention asked of the ensemble reaches them as a mask
        self.wml_native_attention = native_attention(models[0])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        return mix_logits([peer_logits(m, input_ids, attention_mask) for m in self.models], self.omega)

    def num_parameters(self) -> int:
        return sum(count_parameters(m) for m in self.models)


def normalised_weights(omega, count: int) -> Tensor:
    """ω as a float64 tensor summing to 1; a clear error for the wrong length or bad values."""
    weights = torch.as_tensor(np.asarray(omega, dtype=np.float64)).reshape(-1)
    if len(weights) != count:
        raise ValueError(f"ensemble of {count} models was given {len(weights)} weights")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"ensemble weights must be finite, non-negative, with a positive sum; got {weights.tolist()}")
    return weights / weights.sum()


def mix_logits(logits: Sequence[Tensor], omega: Tensor) -> Tensor:
    """Σ_i ω_i z_i over models that share one vocabulary (each term in the logits' dtype)."""
    mixed = None
    for weight, z in zip(omega, logits):
        if mixed is not None and z.shape[-1] != mixed.shape[-1]:
            raise ValueError(f"ensemble members disagree on the vocabulary: {mixed.shape[-1]} vs {z.shape[-1]} logits")
        term = weight.to(z.dtype) * z
        mixed = term if mixed is None else mixed + term
    return mixed


def logits_attending(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, attention: str) -> Tensor:
    """Logits of a model or ensemble whose every member attends ``attention`` (``CAUSAL`` or
    ``BIDIRECTIONAL``) over the non-padding positions of ``attention_mask`` (B, T).

    Why: scoring fixes the attention (next-token scoring causal, masked scoring both ways) whatever
    the model does by itself. A member that attends that way natively gets the padding mask as it
    is (the plain call, unchanged); another gets the additive 4-D mask (B, 1, T, T) that makes it,
    padding keys excluded (Hugging Face models take it in place of a padding mask)."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, not {attention!r}")
    if isinstance(model, EnsembleLM):
        return mix_logits([logits_attending(m, input_ids, attention_mask, attention) for m in model.models],
                          model.omega)
    if native_attention(model) == attention:
        return peer_logits(model, input_ids, attention_mask)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    t = input_ids.shape[-1]
    blocked = (attention_mask == 0)[:, None, None, :].expand(-1, 1, t, -1)
    if attention == CAUSAL:
        blocked = blocked | torch.ones(t, t, dtype=torch.bool, device=input_ids.device).triu(1)
    bias = torch.zeros(blocked.shape, dtype=dtype, device=input_ids.device)
    return peer_logits(model, input_ids, bias.masked_fill(blocked, torch.finfo(dtype).min))


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    if isinstance(model, EnsembleLM):
        return model.num_parameters()
    return sum(p.numel() for p in model.parameters())


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model accepts (smallest over an ensemble), if it says."""
    if isinstance(model, EnsembleLM):
        limits = [x for x in (max_positions(m) for m in model.models) if x]
        return min(limits) if limits else None
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value - _position_offset(model)
    return None


def _position_offset(model: nn.Module) -> int:
    """Positions a model's position table reserves before the first token: RoBERTa-style
    embeddings number positions from ``padding_idx + 1`` (their table's padding row says so)."""
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    pad = getattr(table, "padding_idx", None) if isinstance(table, nn.Embedding) else None
    return int(pad) + 1 if pad is not None else 0


@contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Eval mode and no gradient for the duration; each model's training mode is restored
    (the trainer scores its peers mid-run)."""
    modes = [(m, m.training) for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was in modes:
            m.train(was)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) means CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("config key 'device': value 'cuda' is not allowed here: no CUDA device is available")
    return torch.device(device)


def load_model(path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = torch.float32):
    """A Hugging Face language model (causal or masked: :func:`~wml_framework.api.model_class` of its
    config) in eval mode (float32 by default: CPU scoring of bf16 weights is slow and coarse)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()      # a per-file bar per model would bury our own output
    hf_logging.set_verbosity_error()
    try:
        model = model_class(AutoConfig.from_pretrained(str(path))).from_pretrained(str(path), dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(resolve_device(device)).eval()
