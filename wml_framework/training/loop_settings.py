"""What one training loop trains for: the settings in which the teacher's loop and the peers' differ.

Why a settings object: the teacher and the peers are trained by the same :class:`~.loop.TrainingLoop`
(the same checkpoints, signal handling, NaN guard, threads and records), and differ only in these
numbers and names. The peers' come from the configuration as they always did
(:meth:`LoopSettings.for_peers`); the teacher's are :func:`~.teacher.teacher_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import WMLConfig
from ..runtime import checkpoint
from ..runtime.run_layout import METRICS_FILE, peer_name

__all__ = ["PEERS", "TEACHER", "LoopSettings"]

#: the values of ``LoopSettings.model`` (and of ``TrainerState.model``)
PEERS, TEACHER = "peers", "teacher"


@dataclass(frozen=True)
class LoopSettings:
    """Steps, learning-rate schedule, seeds and outputs of one training loop."""

    model: str                    # PEERS or TEACHER: what callbacks are told is training
    phase: str                    # the run's stage while this loop trains (callbacks' ``TrainerState.phase``)
    max_steps: int
    learning_rate: float          # peak of the warm-up + cosine schedule
    min_lr: float                 # its floor
    warmup_iters: int
    lr_decay_iters: int
    num_batches: int              # micro-batches accumulated per optimizer step
    train_seed: int               # seeds the generator of the training batches
    outer_seed: int               # seeds the generator of the ω step's held-out batches
    eval_interval: int            # held-out evaluation every this many steps (and at step 0 and the end)
    early_stopping: bool          # whether evaluations that stop improving end the training
    checkpoint_kind: str          # checkpoint.PEERS or checkpoint.TEACHER: the file names of its checkpoints
    metrics_file: str             # its records, in the run folder
    announced: bool               # whether run observers hear its events (callbacks always do)
    data_parallel: bool           # whether every rank of a data-parallel run trains (else this process alone)
    placement: str                # peer_placement: where the models live

    @classmethod
    def for_peers(cls, cfg: WMLConfig) -> "LoopSettings":
        """The peers' loop, as the configuration says."""
        return cls(model=PEERS, phase="training", max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
                   min_lr=cfg.min_lr, warmup_iters=cfg.warmup_iters, lr_decay_iters=cfg.lr_decay_iters,
                   num_batches=cfg.num_batches, train_seed=cfg.seed + 11, outer_seed=cfg.seed + 12,
                   eval_interval=cfg.eval_interval, early_stopping=cfg.enable_early_stopping,
                   checkpoint_kind=checkpoint.PEERS, metrics_file=METRICS_FILE, announced=True,
                   data_parallel=True, placement=cfg.peer_placement)

    def model_names(self, count: int) -> list[str]:
        """How messages name each model: ``peer_<i>``, or ``teacher``."""
        return [TEACHER] if self.model == TEACHER else [peer_name(i) for i in range(count)]
