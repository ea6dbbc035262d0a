"""The members of a comparison (method × seed) and their configurations, all checked before any work.

``compare.json`` in the output folder records the plan; starting again with the same options
continues it, and starting with others is refused (a comparison's members must stay comparable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .. import config as cfgmod
from ..runtime.atomic import atomic_write_json
from .methods import Method

__all__ = ["PLAN_FILE", "METHOD_KEYS", "PATH_KEYS", "resolved_path", "Member", "ComparePlan", "make_plan",
           "check_or_save"]

PLAN_FILE = "compare.json"
#: keys a method sets itself; everything else is shared by every member
METHOD_KEYS = ("loss", "updater")
#: keys naming files or folders: compared as the folders they name, from whatever directory
PATH_KEYS = ("corpus", "val_corpus", "blimp", "teacher")


def resolved_path(value):
    """An existing file or folder as an absolute path; anything else ('default', 'none', '') as given."""
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


@dataclass(frozen=True)
class Member:
    """One run of the comparison: ``method`` trained with ``seed`` in ``run_dir``."""

    method: Method
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.method.label}-seed{self.seed}"


@dataclass
class ComparePlan:
    """What a comparison trains. ``base`` holds the shared config values (``teacher`` is filled in
    once the teacher exists); ``teacher_given`` is a teacher folder the user named, if any."""

    out: Path
    methods: list
    seeds: list
    base: dict
    baseline: str
    teacher_given: Optional[str] = None
    members: list = field(default_factory=list)
    tuned: Optional[dict] = None       # what each method took from a tuning (compare/tuned.py), if any

    @property
    def teacher_run(self) -> Path:
        return self.out / "teacher_run"

    @property
    def teacher_dir(self) -> Path:
        return Path(self.teacher_given) if self.teacher_given else self.teacher_run / "teacher"

    def member_config(self, member: Member, host=None) -> cfgmod.WMLConfig:
        values = {**self.base, **member.method.config_values(), "seed": member.seed, "teacher": str(self.teacher_dir)}
        return cfgmod.from_dict(values, host=host)

    def block_sizes(self) -> list[int]:
        """Every method's block length (a method such as ``wml_champion`` sets its own)."""
        return [int(m.settings.get("block_size", self.base["block_size"])) for m in self.methods]

    def teacher_config(self, host=None) -> cfgmod.WMLConfig:
        """The first method's config at the base seed: it trains (and sizes the peers for) the one teacher,
        on the comparison's blocks, with positions for the longest block any method uses (so every
        member's peers hold their blocks, and a tuning's teacher and a comparison's train alike)."""
        values = {**self.base, **self.methods[0].config_values(), "teacher": ""}
        values["block_size"] = self.base["block_size"]
        longest = max(self.block_sizes())
        if longest > values["block_size"]:
            values["teacher_positions"] = max(int(values.get("teacher_positions") or 0), longest)
        return cfgmod.from_dict(values, host=host)

    def eval_options(self, member: Member) -> dict:
        """How ``wml eval`` scores ``member``: on blocks of the comparison's length whatever the method
        trained on, so that every member's held-out loss is measured alike."""
        own = int(member.method.settings.get("block_size", self.base["block_size"]))
        return {} if own == self.base["block_size"] else {"block_size": self.base["block_size"]}

    def to_dict(self) -> dict:
        out = {"methods": [m.to_dict() for m in self.methods], "seeds": list(self.seeds), "baseline": self.baseline,
               "teacher_given": self.teacher_given, "base_config": self.base}
        if self.tuned is not None:
            out["tuned"] = self.tuned
        return out


def make_plan(base: cfgmod.WMLConfig, methods: Sequence[Method], num_seeds: int, out, *, baseline: Optional[str] = None,
              host=None, tuned=None) -> ComparePlan:
    """Members for seeds ``base.seed … base.seed + num_seeds − 1``; every member's configuration is
    validated here, so a bad value fails before the teacher trains. ``tuned``: what each method took
    from a tuning (:func:`~wml_framework.compare.tuned.apply_tuned`, whose methods these are), recorded."""
    if num_seeds < 1:
        raise cfgmod.ConfigError(f"--seeds: value {num_seeds} is not allowed; expected at least 1")
    labels = [m.label for m in methods]
    baseline = baseline or ("wml" if "wml" in labels else labels[0])
    if baseline not in labels:
        raise cfgmod.ConfigError(f"--baseline: {baseline!r} is not one of the methods ({', '.join(labels)})")
    values = base.to_dict()
    teacher_given = values.pop("teacher", "") or None
    if teacher_given:
        teacher_given = str(Path(teacher_given).expanduser().resolve())   # the same folder from any directory
    for key in METHOD_KEYS:
        values.pop(key, None)
    for key in PATH_KEYS:
        if key in values:
            values[key] = resolved_path(values[key])
    out = Path(out).expanduser().resolve()
    plan = ComparePlan(out, list(methods), [base.seed + k for k in range(num_seeds)], values, baseline, teacher_given,
                       tuned=tuned)
    plan.members = [Member(m, s, out / "members" / f"{m.label}-seed{s}") for s in plan.seeds for m in methods]
    for member in plan.members:
        try:
            cfg = plan.member_config(member, host=host)
        except cfgmod.ConfigError as exc:
            raise cfgmod.ConfigError(f"method {member.method.label!r}: {exc}") from None
        # with a budget the steps are known once the data is: the runner warns then (runner._resolve_budget)
        if cfg.max_steps < cfg.outer_every and member.method.updater == "mirror" and not cfg.budget:
            raise cfgmod.ConfigError(f"method {member.method.label!r}: max_steps ({cfg.max_steps}) is below outer_every "
                                     f"({cfg.outer_every}), so its ω would never move; lower outer_every")
    return plan


def check_or_save(plan: ComparePlan) -> bool:
    """Write ``compare.json``, or check that the one there describes the same comparison.
    Returns True when continuing an earlier start."""
    path = plan.out / PLAN_FILE
    mine = _normalized(json.loads(json.dumps(plan.to_dict())))
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise cfgmod.ConfigError(f"{path} is unreadable ({exc}); move it away to start this comparison over") from None
        # keys added to wml since the comparison started take their defaults (that is what the runs used)
        defaults = cfgmod.from_dict({}, check_plugins=False).to_dict()
        saved["base_config"] = {**{k: v for k, v in defaults.items() if k not in METHOD_KEYS + ("teacher",)},
                                **(saved.get("base_config") or {})}
        if _normalized(saved) != mine:
            diff = _first_difference(_normalized(saved), mine)
            raise cfgmod.ConfigError(f"{plan.out} holds a comparison with other settings ({diff}); use another --out, "
                                     "or the same options to continue it")
        return True
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, mine)
    return False


def _normalized(plan_dict: dict) -> dict:
    """The plan with its paths resolved (a folder named relatively then and absolutely now is the same)."""
    out = dict(plan_dict)
    base = dict(out.get("base_config") or {})
    for key in PATH_KEYS:
        if key in base:
            base[key] = resolved_path(base[key])
    out["base_config"] = base
    out["teacher_given"] = resolved_path(out.get("teacher_given"))
    return out


def _first_difference(saved: dict, mine: dict, prefix: str = "") -> str:
    for key in sorted(set(saved) | set(mine)):
        a, b = saved.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            if a != b:
                return _first_difference(a, b, f"{prefix}{key}.")
        elif a != b:
            return f"{prefix}{key}: {a!r} then, {b!r} now"
    return "unknown difference"
