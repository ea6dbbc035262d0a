"""What a tuning folder holds: the shared settings, and per method its search space and trial count.

``tune.json`` records it. The same command continues; other shared settings (or another space for
a method already there) are refused, as ``compare.json`` refuses them. A folder may gain methods
(they share its teacher), and a method's ``--trials`` may grow to search on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ... import config as cfgmod
from ...runtime.atomic import atomic_write_json
from ..methods import Method
from ..plan import PATH_KEYS, ComparePlan, make_plan, resolved_path
from .search import random_trials_for
from .space import Dimension, Space, corners, make_space, settings_for, uses_key

__all__ = ["TUNE_FILE", "TunePlan", "make_tune_plan", "check_or_save", "normalized_base", "base_difference"]

TUNE_FILE = "tune.json"
#: shared keys that may differ between a tuning and a comparison (or a continued tuning)
FREE_BASE_KEYS = ("seed", "threads")


@dataclass
class TunePlan:
    """Tuning of ``methods`` (each with its ``spaces[label]``) for ``trials`` trials, at ``seed``, in ``out``.
    ``teacher_plan`` is the comparison-shaped plan whose teacher every trial shares."""

    out: Path
    methods: list
    spaces: dict
    trials: int
    seed: int
    teacher_plan: ComparePlan
    recorded: dict = field(default_factory=dict)     # tune.json's methods, this start's included

    @property
    def base(self) -> dict:
        return self.teacher_plan.base

    def random_trials(self) -> int:
        return random_trials_for(self.trials)

    def method_dir(self, method: Method) -> Path:
        return self.out / method.label

    def trial_dir(self, method: Method, index: int) -> Path:
        return self.method_dir(method) / "trials" / f"trial-{index:03d}"

    def trial_values(self, method: Method, settings: dict) -> dict:
        """A trial's whole configuration as plain values: shared settings, the method's, the tuned ones."""
        return {**self.base, **method.config_values(), **settings, "seed": self.seed,
                "teacher": str(self.teacher_plan.teacher_dir)}

    def trial_config(self, method: Method, values: dict, host=None) -> cfgmod.WMLConfig:
        return cfgmod.from_dict(self.trial_values(method, settings_for(values, self.base)), host=host)

    def to_dict(self) -> dict:
        return {"base_config": self.base, "teacher_given": self.teacher_plan.teacher_given, "seed": self.seed,
                "teacher_method": self.teacher_plan.methods[0].label, "methods": self.recorded}


def make_tune_plan(base: cfgmod.WMLConfig, methods: Sequence[Method], trials: int, out, *,
                   space: Sequence[str] = (), host=None) -> TunePlan:
    """The plan, with every method's space checked against the configuration (its lowest and highest
    corner must make a valid config) before any work."""
    if trials < 1:
        raise cfgmod.ConfigError(f"--trials: value {trials} is not allowed; expected at least 1")
    out = Path(out).expanduser().resolve()
    saved = _read(out)
    # the teacher is trained with the folder's first method's config, whichever methods this start names
    first = (saved or {}).get("teacher_method")
    teacher_method = next((m for m in methods if first and m.label == first), None)
    if first and teacher_method is None:
        d = saved["methods"][first]["method"]
        teacher_method = Method(d["label"], d["title"], d["loss"], d["updater"], d.get("settings") or {},
                                d.get("ensemble", "learned ω"))
    teacher_method = teacher_method or methods[0]
    others = [m for m in methods if m.label != teacher_method.label]
    teacher_plan = make_plan(base, [teacher_method, *others], 1, out, host=host)
    spaces = {}
    for m in methods:
        try:
            spaces[m.label] = make_space(m.loss, m.updater, base.max_steps, space, budget=base.budget)
        except cfgmod.ConfigError as exc:
            raise cfgmod.ConfigError(f"method {m.label!r}: {exc}") from None
    if base.enable_early_stopping:
        raise cfgmod.ConfigError("config key 'enable_early_stopping': value True is not allowed with wml tune: early "
                                 "stopping reads the evaluated half of the held-out split, which tuning must never "
                                 "see; set enable_early_stopping = false (a fixed budget, as a fair comparison has)")
    for text in space:
        key = text.partition("=")[0].strip()
        if not any(uses_key(key, m.loss, m.updater) for m in methods):
            raise cfgmod.ConfigError(f"--space: key {key!r} is read by none of the methods tuned "
                                     f"({', '.join(m.label for m in methods)})")
    _check_teacher_positions(teacher_plan, methods, host)
    plan = TunePlan(out, list(methods), spaces, trials, base.seed, teacher_plan)
    for m in methods:
        for corner in corners(spaces[m.label]):
            try:
                plan.trial_config(m, corner, host=host)
            except cfgmod.ConfigError as exc:
                raise cfgmod.ConfigError(f"method {m.label!r}: the search space's corner {corner} makes an invalid "
                                         f"config ({exc}); narrow --space") from None
    plan.recorded = {label: dict(v) for label, v in ((saved or {}).get("methods") or {}).items()}
    for m in methods:
        plan.recorded[m.label] = {"method": m.to_dict(), "space": spaces[m.label].to_dict(), "trials": trials,
                                  "random_trials": plan.random_trials()}
    return plan


def _check_teacher_positions(teacher_plan, methods: Sequence[Method], host) -> None:
    """A folder's teacher, trained at its first start, must hold the blocks of a method added later
    (``wml_champion``'s 512): refused here, before any work, not by each trial at its start."""
    config = Path(teacher_plan.teacher_dir) / "config.json"
    if not config.is_file():
        return
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    limit = next((v for k in ("max_position_embeddings", "n_positions") if isinstance(v := saved.get(k), int)), None)
    for m in methods:
        block = cfgmod.from_dict({**teacher_plan.base, **m.config_values()}, check_plugins=False).block_size
        if limit is not None and block > limit:
            raise cfgmod.ConfigError(f"method {m.label!r}: its blocks of {block} tokens do not fit the tuning folder's "
                                     f"teacher ({limit} positions, trained at its first start); tune it in another --out")


def _read(out: Path) -> Optional[dict]:
    path = out / TUNE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise cfgmod.ConfigError(f"{path} is unreadable ({exc}); move it away to start this tuning over") from None


def normalized_base(base: dict) -> dict:
    """Shared settings as compared: paths resolved, keys wml gained since they were written at their defaults."""
    defaults = cfgmod.from_dict({}, check_plugins=False).to_dict()
    out = {**{k: v for k, v in defaults.items() if k not in ("loss", "updater", "teacher")}, **base}
    return {k: resolved_path(v) if k in PATH_KEYS else v for k, v in out.items()}


def base_difference(saved: dict, mine: dict, free: Sequence[str] = ()) -> Optional[str]:
    """The first shared key on which two sets of settings differ ('KEY: A then, B now'), or None."""
    a, b = normalized_base(saved), normalized_base(mine)
    for key in sorted(set(a) | set(b)):
        if key not in free and a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} then, {b.get(key)!r} now"
    return None


def check_or_save(plan: TunePlan) -> bool:
    """Write ``tune.json``, or check that the one there is this tuning's. Returns True when continuing."""
    saved = _read(plan.out)
    if saved is not None:
        diff = base_difference(saved.get("base_config") or {}, plan.base, free=("threads",))
        if diff is None and saved.get("seed") != plan.seed:
            diff = f"seed: {saved.get('seed')!r} then, {plan.seed!r} now"
        if diff is None and resolved_path(saved.get("teacher_given")) != resolved_path(plan.teacher_plan.teacher_given):
            diff = f"teacher: {saved.get('teacher_given')!r} then, {plan.teacher_plan.teacher_given!r} now"
        for m in plan.methods:
            old = (saved.get("methods") or {}).get(m.label)
            if diff is None and old is not None:
                if old["method"] != m.to_dict():
                    diff = f"method {m.label}: {old['method']} then, {m.to_dict()} now"
                elif old["space"] != plan.spaces[m.label].to_dict():
                    diff = (f"method {m.label}'s space: {Space(tuple(_dim(d) for d in old['space'])).text()} then, "
                            f"{plan.spaces[m.label].text()} now")
        if diff:
            raise cfgmod.ConfigError(f"{plan.out} holds a tuning with other settings ({diff}); use another --out, "
                                     "or the same options to continue it")
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.out / TUNE_FILE, json.loads(json.dumps(plan.to_dict())))
    return saved is not None


def _dim(d: dict) -> Dimension:
    return Dimension(d["key"], d["low"], d["high"], d.get("log", False), d.get("integer", False))
