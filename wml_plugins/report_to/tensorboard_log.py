"""``report_to = ["tensorboard"]``: the run's records as TensorBoard scalars in ``<run>/tensorboard/``
(``tensorboard --logdir <run>/tensorboard``), through torch's ``SummaryWriter``.

A resumed run writes a new event file in the same folder, which starts by purging the steps after
its checkpoint: those the interrupted process logged past it, which the resumed run logs again
(``metrics.jsonl`` is cut back the same way), so TensorBoard shows each step once.
"""

from __future__ import annotations

from pathlib import Path

from wml_framework import hookimpl

from .observer import RunObserver

__all__ = ["FOLDER", "TensorBoardWriter", "first_step", "wml_run_event"]

FOLDER = "tensorboard"


def first_step(start: int) -> int:
    """The first step a run that starts at checkpoint step ``start`` logs: the next one, or 0 from
    step 0 (whose evaluation is logged again)."""
    return start + 1 if start > 0 else 0


class TensorBoardWriter:
    def __init__(self, run_dir: Path, start: int, config: dict):  # noqa: ARG002 - the scalars are the record's
        # needs the tensorboard package (the extra), imported by a run that names it only
        from torch.utils.tensorboard import SummaryWriter

        self.summary = SummaryWriter(log_dir=str(run_dir / FOLDER), purge_step=first_step(start))

    def write(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.summary.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self.summary.flush()

    def close(self) -> None:
        self.summary.close()


_observer = RunObserver("tensorboard", TensorBoardWriter)


@hookimpl
def wml_run_event(event, payload):
    """TensorBoard scalars of every record in <run>/tensorboard/, for runs with report_to = ["tensorboard"]."""
    _observer(event, payload)
