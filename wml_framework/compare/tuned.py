"""``wml compare --tuned DIR``: each method runs with the settings ``wml tune`` found for it in DIR.

The tuned settings override the shared configuration, as a method's own settings do. Checked before
any work: the tuning's seed must not be one of the comparison's (settings chosen on a seed and then
judged on it would be judged on the data that chose them), and the tuning's shared settings must be
the comparison's but for the seed and the threads (settings tuned for one budget, corpus or peer
family say little about another).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

from .. import config as cfgmod
from .methods import Method
from .plan import METHOD_KEYS, resolved_path
from .tune.outputs import TUNED_FILE
from .tune.plan import FREE_BASE_KEYS, TUNE_FILE, base_difference

__all__ = ["apply_tuned"]


def _read(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise cfgmod.ConfigError(f"--tuned: {path.parent} has no {path.name} ({what}); run `wml tune --out "
                                 f"{path.parent}` first, or name the folder it wrote") from None
    except (OSError, ValueError) as exc:
        raise cfgmod.ConfigError(f"--tuned: {path} is unreadable ({exc})") from None


def apply_tuned(tuned_dir, base: cfgmod.WMLConfig, methods: Sequence[Method], num_seeds: int
                ) -> tuple[list[Method], dict]:
    """The methods with their tuned settings added, and the record of what each used (for
    ``compare.json`` and the tables): ``{"dir", "seed", "methods": {label: {"tuned", "settings", …}}}``."""
    folder = Path(tuned_dir).expanduser().resolve()
    seeds = [base.seed + k for k in range(num_seeds)]
    tuned = _read(folder / TUNED_FILE, "the tuned settings")
    plan = _read(folder / TUNE_FILE, "the tuning's plan")
    seed = plan.get("seed")
    if seed in seeds:
        raise cfgmod.ConfigError(f"--tuned: the tuning ran at seed {seed}, one of this comparison's seeds "
                                 f"({', '.join(map(str, seeds))}); tune on a seed the comparison leaves out "
                                 f"(e.g. --set seed={max(seeds) + 1} for the comparison)")
    mine = {k: v for k, v in base.to_dict().items() if k not in METHOD_KEYS + ("teacher",)}
    diff = base_difference(plan.get("base_config") or {}, mine, free=FREE_BASE_KEYS)
    if diff is not None:
        key = diff.split(":", 1)[0]
        raise cfgmod.ConfigError(f"--tuned: the tuning in {folder} had other shared settings than this comparison "
                                 f"({diff}); tune again with {key} as here, or compare with the tuning's {key}")
    given = resolved_path(plan.get("teacher_given"))
    if given and base.teacher and resolved_path(base.teacher) != given:
        raise cfgmod.ConfigError(f"--tuned: the tuning's teacher was {given}, this comparison's is "
                                 f"{resolved_path(base.teacher)}; give the comparison the same --teacher")
    out, record = [], {}
    for m in methods:
        entry: Optional[dict] = tuned.get(m.label)
        if entry is None:
            out.append(m)
            record[m.label] = {"tuned": False, "settings": {}}
            continue
        if entry.get("method") != m.to_dict():
            raise cfgmod.ConfigError(f"--tuned: {folder}'s {m.label!r} was tuned as {entry.get('method')}, not as "
                                     f"this comparison's {m.to_dict()}")
        settings = dict(entry["settings"])
        out.append(dataclasses.replace(m, settings={**m.settings, **settings}))
        record[m.label] = {"tuned": True, "settings": settings, "objective": entry.get("objective"),
                           "trial": entry.get("trial")}
    return out, {"dir": str(folder), "seed": seed, "methods": record}
