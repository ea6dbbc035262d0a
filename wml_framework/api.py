"""The data types and protocols that plugins produce and consume.

Kept free of implementations: the trainer, the verifier and third-party plugins all
program against these shapes. Tensors follow the causal-LM convention: logits are
``(batch, time, vocab)``, labels ``(batch, time)`` aligned with them (already shifted),
and a label of ``IGNORE_INDEX`` marks a position that is neither scored nor counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100


@dataclass
class Batch:
    """Model inputs and aligned labels. ``inputs`` is one tensor for all peers, or a list
    with one entry per peer (peers with different input spaces, e.g. linear test peers)."""

    inputs: Union[Tensor, list]
    labels: Tensor

    def for_peer(self, i: int) -> Any:
        return self.inputs[i] if isinstance(self.inputs, (list, tuple)) else self.inputs

    def to(self, device) -> "Batch":
        move = (lambda x: x.to(device))
        inputs = [move(x) for x in self.inputs] if isinstance(self.inputs, (list, tuple)) else move(self.inputs)
        return Batch(inputs, move(self.labels))


def peer_logits(model: nn.Module, inputs: Any) -> Tensor:
    """Logits of a peer: Hugging Face models return an output object, plain modules a tensor."""
    out = model(input_ids=inputs) if hasattr(model, "config") and hasattr(model, "generate") else model(inputs)
    return out if isinstance(out, Tensor) else out.logits


@dataclass
class LossResult:
    """What a loss returns. ``total`` is Σ_i L_i, the scalar the inner step differentiates;
    the per-peer parts are kept apart (and detached) so runs can log CE and KL separately."""

    total: Tensor
    per_peer: Tensor
    ce: Tensor
    kl: Tensor


class Loss(Protocol):
    """An inner-loop loss: differentiable in the peers' logits and in ω."""

    needs_teacher: bool

    def __call__(self, logits: Sequence[Tensor], labels: Tensor, omega: Tensor,
                 teacher_logits: Optional[Tensor] = None) -> LossResult: ...


@dataclass
class OuterContext:
    """Everything an updater may use for one outer step."""

    peers: Sequence[nn.Module]
    loss: Loss
    omega: Tensor
    train: Batch
    val: Batch
    inner_lr: float
    outer_step: int
    teacher_logits: Optional[Tensor] = None
    forward: Callable[[nn.Module, Any], Tensor] = peer_logits


@dataclass
class UpdateResult:
    omega: Tensor
    grad: Optional[Tensor] = None
    eta: float = 0.0
    info: dict = field(default_factory=dict)


class Updater(Protocol):
    """Moves ω on the simplex. ``needs_validation`` says whether ``step`` uses held-out data."""

    needs_validation: bool

    def initial_omega(self) -> Tensor: ...

    def step(self, ctx: OuterContext) -> UpdateResult: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Initializer(Protocol):
    """Builds peers from a teacher. ``check`` (optional) rejects a request before any work."""

    def build(self, teacher: nn.Module, family: Any, targets: list, *, calibration: Optional[Batch] = None,
              seed: int = 0) -> "InitResult": ...

    def check(self, teacher_config: Any, family: Any, targets: list, *, calibration: Optional[Batch] = None) -> None: ...


@dataclass
class InitResult:
    """Peers built by an initializer, the table it reports and its search/pruning trace."""

    peers: list
    rows: list = field(default_factory=list)
    trace: list = field(default_factory=list)


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


def uniform_omega(num_peers: int, dtype=torch.float64) -> Tensor:
    return torch.full((num_peers,), 1.0 / num_peers, dtype=dtype)
