"""What ``wml tune`` searches: a range per config key, its scale, and each method's default ranges.

A key is tuned between two bounds, on a linear or a log scale, and whole numbers for an int key.
Only a method's own recipe may be tuned (the optimization, loss and ω keys): the budget, the data,
the shapes and the teacher are what every method shares in a comparison. Two keys are tuned as a
ratio so that the config's relations hold whatever the search picks: ``min_lr_ratio``
(min_lr = learning_rate × it) and ``omega_min_ratio`` (omega_min_lr = omega_lr × it, η's decay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from ... import config as cfgmod
from ...api import Option
from ...plugin_system.validation import ConfigError, allowed, validate_value

__all__ = ["RATIO_KEYS", "TUNABLE_GROUPS", "Dimension", "Space", "tunable_keys", "parse_dimension", "default_space",
           "make_space", "settings_for", "corners"]

#: tuning key -> (the config key it sets, the key it is a fraction of)
RATIO_KEYS = {"min_lr_ratio": ("min_lr", "learning_rate"), "omega_min_ratio": ("omega_min_lr", "omega_lr")}
#: config groups whose numeric keys are a method's recipe (docs/config.md)
TUNABLE_GROUPS = ("optimization", "loss", "omega")
#: numeric keys of those groups that are not tuned: the budget, and the keys the ratios set
_NOT_TUNED = {"max_steps": "it is the budget every method shares",
              "budget_steps": "it splits the budget every method shares into steps",
              "min_lr": "it follows learning_rate; tune min_lr_ratio (min_lr = learning_rate × it)",
              "omega_min_lr": "it follows omega_lr; tune omega_min_ratio (omega_min_lr = omega_lr × it)"}
_DIGITS = 4          # significant digits of a suggested value: readable in tables and TOML, finer than any effect


def tunable_keys() -> list[str]:
    """Every key ``--space`` accepts."""
    keys = [name for name, f in cfgmod.FIELDS.items() if f.metadata["group"] in TUNABLE_GROUPS
            and f.metadata["spec"].type in (int, float) and name not in _NOT_TUNED]
    return keys + list(RATIO_KEYS)


def _spec(key: str):
    if key in RATIO_KEYS:
        return Option(key, 0.1, kind=float, low=0.0, high=1.0, low_open=True)
    return cfgmod.FIELDS[key].metadata["spec"]


@dataclass(frozen=True)
class Dimension:
    """One tuned key: ``low``…``high`` (inclusive), searched in log space when ``log``, rounded when ``integer``."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    @property
    def bounds(self) -> tuple[float, float]:
        """The bounds in the coordinates the search works in (log10 of the value for a log key)."""
        return (self.to_search(self.low), self.to_search(self.high))

    def to_search(self, value: float) -> float:
        return math.log10(value) if self.log else float(value)

    def from_search(self, x: float):
        value = 10.0 ** x if self.log else float(x)
        value = min(max(value, self.low), self.high)          # the log round trip may step outside by a hair
        if self.integer:
            return int(round(value))
        return float(f"{value:.{_DIGITS}g}")

    def text(self) -> str:
        """As ``--space`` takes it."""
        return f"{_number(self.low)}:{_number(self.high)}" + (":log" if self.log else "") + (":int" if self.integer else "")

    def to_dict(self) -> dict:
        return {"key": self.key, "low": self.low, "high": self.high, "log": self.log, "integer": self.integer}


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e6 else f"{x:g}"


@dataclass(frozen=True)
class Space:
    """The dimensions of one method's search, in a fixed order (the order of the table's columns)."""

    dimensions: tuple

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def bounds(self) -> dict[str, tuple[float, float]]:
        return {d.key: d.bounds for d in self.dimensions}

    def to_search(self, values: Mapping) -> dict[str, float]:
        return {d.key: d.to_search(values[d.key]) for d in self.dimensions}

    def from_search(self, point: Mapping) -> dict:
        return {d.key: d.from_search(point[d.key]) for d in self.dimensions}

    def to_dict(self) -> list:
        return [d.to_dict() for d in self.dimensions]

    def text(self) -> str:
        return ", ".join(f"{d.key}={d.text()}" for d in self.dimensions)


def parse_dimension(text: str, *, max_steps: Optional[int] = None) -> tuple[str, Optional[Dimension]]:
    """``KEY=LOW:HIGH[:log][:int]`` -> (key, Dimension); ``KEY=fixed`` -> (key, None): the key keeps
    the config's value. A bad key, bound or scale is a ConfigError naming it and what is allowed."""
    key, sep, rest = (part.strip() for part in text.partition("="))
    if not sep or not key:
        raise ConfigError(f"--space: {text!r} is not KEY=LOW:HIGH[:log][:int] or KEY=fixed")
    if key not in tunable_keys():
        why = _NOT_TUNED.get(key) or (f"it is not a numeric key of the {', '.join(TUNABLE_GROUPS)} groups"
                                      if key in cfgmod.FIELDS else "it is not a config key")
        raise ConfigError(f"--space: key {key!r} cannot be tuned ({why}); tunable keys: {', '.join(tunable_keys())}")
    if rest == "fixed":
        return key, None
    parts = [p.strip() for p in rest.split(":")]
    flags = parts[2:]
    if len(parts) < 2 or any(f not in ("log", "int") for f in flags) or len(set(flags)) != len(flags):
        raise ConfigError(f"--space: {key}={rest!r} is not LOW:HIGH, optionally followed by :log and/or :int")
    spec = _spec(key)
    integer = spec.type is int
    if "int" in flags and not integer:
        raise ConfigError(f"--space: {key}={rest!r}: ':int' is only for whole-number keys; {key} is a {spec.type.__name__}")
    low, high = (_bound(key, rest, p, spec) for p in parts[:2])
    if not low < high:
        raise ConfigError(f"--space: {key}={rest!r}: LOW must be below HIGH (to fix a value, use --set {key}=VALUE)")
    if "log" in flags and low <= 0:
        raise ConfigError(f"--space: {key}={rest!r}: a log scale needs LOW > 0")
    if key == "outer_every" and max_steps is not None and high > max_steps:
        raise ConfigError(f"--space: {key}={rest!r}: HIGH is above max_steps ({max_steps}), so ω would never move")
    return key, Dimension(key, low, high, log="log" in flags, integer=integer)


def _bound(key: str, rest: str, text: str, spec) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--space: {key}={rest!r}: bound {text!r} is not a number") from None
    if spec.type is int and not value.is_integer():
        raise ConfigError(f"--space: {key}={rest!r}: bounds of a whole-number key must be whole numbers")
    try:
        validate_value(key, spec, int(value) if spec.type is int and value.is_integer() else value)
    except ConfigError:
        raise ConfigError(f"--space: {key}={rest!r}: bound {text} is outside what {key} allows "
                          f"({allowed(spec)})") from None
    return value


#: the documented default ranges (docs: `wml tune`), by what a method's loss and updater use
_LEARNING_RATE = "learning_rate=1e-4:1e-1:log"
_BY_LOSS = {"wml": ("loss_alpha=0.05:0.95", "temperature=0.5:4:log"),
            "kd": ("kd_alpha=0.05:0.95", "kd_temperature=0.5:8:log")}
_BY_UPDATER = {"mirror": ("omega_lr=0.01:10:log", "omega_min_ratio=0.001:1:log", "outer_every=1:50:log:int")}


def default_space(loss: str, updater: str, max_steps: int) -> list[Dimension]:
    """The learning rate; α and T of the ``wml`` loss (WML, DML) or of ``kd``; η, its decay and
    ``outer_every`` for the learned-ω updater (``outer_every`` at most ``max_steps``)."""
    texts = [_LEARNING_RATE, *_BY_LOSS.get(loss, ()), *_BY_UPDATER.get(updater, ())]
    dims = []
    for text in texts:
        if text.startswith("outer_every"):
            high = min(50, max_steps)
            if high <= 1:
                continue                 # one step: nothing to choose
            text = f"outer_every=1:{high}:log:int"
        dims.append(parse_dimension(text)[1])
    return dims


#: keys only some methods read: a `--space` entry for one goes to the methods that use it
_USED_BY = {"loss_alpha": ("loss", "wml"), "temperature": ("loss", "wml"), "kd_alpha": ("loss", "kd"),
            "kd_temperature": ("loss", "kd"), "omega_lr": ("updater", "mirror"), "omega_min_ratio": ("updater", "mirror"),
            "omega_warmup_iters": ("updater", "mirror"), "omega_decay_iters": ("updater", "mirror"),
            "outer_every": ("updater", "mirror")}
#: keys a budget sets (training/budget.py): tuning them would search what is then overwritten
_SET_BY_BUDGET = ("lr_decay_iters", "omega_decay_iters")


def uses_key(key: str, loss: str, updater: str) -> bool:
    """Whether a method of this loss and updater reads ``key`` (a key of no particular kind: yes)."""
    kind, name = _USED_BY.get(key, (None, None))
    return kind is None or {"loss": loss, "updater": updater}[kind] == name


def make_space(loss: str, updater: str, max_steps: int, overrides: Sequence[str] = (), *,
               budget: str = "") -> Space:
    """The default space of a method, with the ``--space`` entries it uses replacing, adding or fixing
    keys (an entry for α_kd does not reach a WML method). With a ``budget``, the keys it sets are refused."""
    dims = {d.key: d for d in default_space(loss, updater, max_steps)}
    for text in overrides:
        key, dim = parse_dimension(text, max_steps=max_steps)
        if budget and key in _SET_BY_BUDGET:
            raise ConfigError(f"--space: key {key!r} cannot be tuned with budget = {budget!r}: the budget sets it "
                              "(⌈steps / outer_every⌉ or the budget's steps); tune the budget's length elsewhere")
        if not uses_key(key, loss, updater):
            continue
        if dim is None:
            dims.pop(key, None)
        else:
            dims[key] = dim
    if not dims:
        raise ConfigError("--space: every key is fixed; nothing is left to tune")
    return Space(tuple(dims.values()))


def settings_for(values: Mapping, base: Mapping) -> dict:
    """The config keys a trial sets from its tuned ``values``: the tuned keys themselves, and for each
    ratio pair the key it sets, from the tuned ratio or else the base config's ratio (so tuning
    learning_rate alone keeps min_lr / learning_rate as configured)."""
    out = {k: v for k, v in values.items() if k not in RATIO_KEYS}
    for ratio_key, (target, of) in RATIO_KEYS.items():
        if ratio_key not in values and of not in values:
            continue
        whole = out.get(of, base[of])
        ratio = values[ratio_key] if ratio_key in values else (base[target] / base[of] if base[of] else 0.0)
        out[target] = float(f"{whole * ratio:.{_DIGITS + 2}g}")
    return out


def corners(space: Space) -> Iterable[dict]:
    """The lowest and the highest point of the space (both checked against the config before any work)."""
    yield {d.key: d.from_search(d.bounds[0]) for d in space.dimensions}
    yield {d.key: d.from_search(d.bounds[1]) for d in space.dimensions}
