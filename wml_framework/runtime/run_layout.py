"""The run folder's layout, in one place: every reader and writer of a run asks this module
where things are.

    RUN_DIR/
      config.toml        the resolved configuration
      metrics.jsonl      one JSON record per step, outer step and evaluation of the peers
      teacher_metrics.jsonl  the same records of the teacher's training, when the run trains one
      teacher/           the teacher (Hugging Face folder)
      init_table.json    one row per peer: shape, parameters, target, error
      init_trace.json    how the initializer got there
      peers/peer_<i>/    every peer (Hugging Face folders)
      champion/          a copy of the best peer
      milestones/chck_<k>M/peer_<i>/  every peer when the words trained on passed k million (BabyLM tracks)
      babylm/            the champion's milestones as the BabyLM pipeline evaluates them, and its script
      summary.json       the training result
      eval.json          the evaluation (``wml eval``)
      report.md, plots/  the report (``wml report``)
      checkpoint/        resumable training state
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODEL_CONFIG", "METRICS_FILE", "TEACHER_METRICS_FILE", "RunLayout", "peer_name", "peer_index", "is_model_dir", "is_run_dir"]

MODEL_CONFIG = "config.json"
#: the records of the peers' training, and of the teacher's (a file of its own: a resume of either
#: truncates its file to its checkpoint's step, which must not cut the other's records)
METRICS_FILE, TEACHER_METRICS_FILE = "metrics.jsonl", "teacher_metrics.jsonl"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    def __init__(self, root) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def teacher_metrics(self) -> Path:
        return self.root / TEACHER_METRICS_FILE

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def init_table(self) -> Path:
        return self.root / "init_table.json"

    @property
    def init_trace(self) -> Path:
        return self.root / "init_trace.json"

    @property
    def peers(self) -> Path:
        return self.root / "peers"

    def peer(self, i: int) -> Path:
        return self.peers / peer_name(i)

    @property
    def champion(self) -> Path:
        return self.root / "champion"

    @property
    def milestones(self) -> Path:
        return self.root / "milestones"

    def milestone(self, name: str) -> Path:
        return self.milestones / name

    @property
    def babylm(self) -> Path:
        return self.root / "babylm"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    def peer_dirs(self) -> list[Path]:
        """``peers/peer_<i>`` model folders in index order (peer_10 after peer_9)."""
        if not self.peers.is_dir():
            return []
        found = [p for p in self.peers.iterdir() if p.is_dir() and is_model_dir(p)]
        return sorted(found, key=lambda p: (peer_index(p.name), p.name))


def peer_name(i: int) -> str:
    return f"peer_{i}"


def peer_index(name: str) -> int:
    """The index in ``peer_<i>``; names of another form sort last."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30


def is_model_dir(path) -> bool:
    return (Path(path) / MODEL_CONFIG).is_file()


def is_run_dir(path) -> bool:
    return RunLayout(path).peers.is_dir()
