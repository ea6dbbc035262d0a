"""The training loop's state: what a checkpoint keeps (:class:`TrainState`), what an inner step hands
the outer step (:class:`LastMicroBatch`), and the error that stops a training (:class:`TrainingError`).
Kept apart from :mod:`.loop` so that the loop reads as the steps it takes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..api import Batch, InnerGradients

__all__ = ["TrainingError", "TrainState", "LastMicroBatch"]


class TrainingError(RuntimeError):
    """Training cannot go on (a model, or the updater, keeps producing non-finite values); says which
    model or updater plugin, and the step."""


@dataclass
class TrainState:
    """Everything that changes during training and must survive a resume."""

    step: int = 0
    tokens: int = 0
    words: int = 0                                   # whitespace-separated words trained on (repeats counted)
    omega: torch.Tensor = None
    best_val: float = math.inf
    bad_evals: int = 0
    stopped_early: bool = False
    nonfinite: list = field(default_factory=list)   # per model: consecutive steps skipped for NaN/inf
    nonfinite_outer: int = 0                         # consecutive outer steps skipped for a non-finite ω


@dataclass
class LastMicroBatch:
    """The last micro-batch of an inner step, what the outer step is computed on."""

    batch: Batch
    teacher_logits: Optional[torch.Tensor] = None
    inner: Optional[InnerGradients] = None
