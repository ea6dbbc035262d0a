"""The word budget of the BabyLM 2025 tracks: the words every model of a run trained on.

The rules count every model's training text: the teacher's (an ancillary model, in the rules'
words) and the peers'. The peers read the same batch at each step, so a step's words are counted
once; ``per_model`` gives the stricter count (each peer's words added up) as well, for readers who
count so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["TRACK_BUDGET_M", "WordBudget", "planned_words"]

#: the words a track allows in total, in millions (the text itself is a tenth of it)
TRACK_BUDGET_M = {"strict-small": 100, "strict": 1000}


@dataclass
class WordBudget:
    """Words trained on against a track's budget: the teacher's (None: a given teacher, whose
    training text wml cannot know) and the peers' (once a step: they read the same batch)."""

    track: str
    teacher: Optional[int]
    peers: int
    num_peers: int

    @property
    def budget(self) -> Optional[int]:
        m = TRACK_BUDGET_M.get(self.track)
        return None if m is None else m * 1_000_000

    @property
    def total(self) -> int:
        return (self.teacher or 0) + self.peers

    def as_dict(self) -> dict:
        return {"track": self.track, "teacher": self.teacher, "peers": self.peers, "total": self.total,
                "per_model": (self.teacher or 0) + self.peers * self.num_peers, "budget": self.budget,
                "within_budget": None if self.budget is None else self.total <= self.budget,
                "teacher_counted": self.teacher is not None}

    def line(self) -> str:
        teacher = ("a given teacher (its training words are not known to wml: add them yourself)"
                   if self.teacher is None else f"teacher {self.teacher:,}")
        text = f"words trained on: {teacher}, peers {self.peers:,} (once a step: every peer reads the same batch)"
        if self.budget is not None:
            verdict = "within" if self.total <= self.budget else "OVER"
            text += f"; total {self.total:,} is {verdict} the {self.track} budget of {self.budget:,}"
        return text


def planned_words(steps: int, tokens_per_step: int, corpus_words: int, corpus_tokens: int) -> int:
    """The words ``steps`` steps of ``tokens_per_step`` tokens are expected to train on (random
    blocks hold the corpus's words per token on average)."""
    if corpus_tokens <= 0:
        return 0
    return round(steps * tokens_per_step * corpus_words / corpus_tokens)
