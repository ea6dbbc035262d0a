"""The numbers of a ``metrics.jsonl`` record, one tag each, read generically: a field the loop adds
later (a word count, say) is logged without a change here."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

__all__ = ["NOT_LOGGED", "scalars"]

#: the record's name and its x-axis, what the event adds to the record (the folder, the planned steps),
#: and ``skipped`` (the indices of the peers whose step was skipped: labels, not measurements)
NOT_LOGGED = frozenset({"kind", "step", "run_dir", "total_steps", "skipped"})


def scalars(record: Mapping[str, Any], num_peers: Optional[int]) -> dict[str, float]:
    """``{"train/ce/peer_0": 3.1, "train/lr": 0.005, "eval/ensemble_val_loss": …}``: each number under
    ``KIND/FIELD``, a list of one value per peer under ``KIND/FIELD/peer_I``, a dict's numbers under
    ``KIND/FIELD/KEY``. Text, booleans, None (a non-finite value), and lists of another length than
    ``num_peers`` are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key not in NOT_LOGGED:
            _add(f"{record['kind']}/{key}", value, num_peers, out)
    return out


def _add(tag: str, value: Any, num_peers: Optional[int], out: dict[str, float]) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out[tag] = float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _add(f"{tag}/{key}", item, num_peers, out)
    elif isinstance(value, (list, tuple)) and len(value) == num_peers:
        for i, item in enumerate(value):
            if not isinstance(item, (list, tuple, Mapping)):
                _add(f"{tag}/peer_{i}", item, num_peers, out)
