"""Checking one value against its spec (a config key's or a plugin option's): conversion of
command-line strings, types, ranges, choices, and messages that name the key, the value and what is
allowed. Shared by the configuration and the plugin host, so both say it the same way."""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

from ..api import Option

__all__ = ["SUPPORTED_TYPES", "ConfigError", "allowed", "close_matches", "validate_value"]

SUPPORTED_TYPES = (int, float, str, bool, list)


class ConfigError(ValueError):
    """A configuration key or value that is not allowed; the message says which and why."""


def allowed(spec: Option) -> str:
    """Human-readable description of what a spec accepts (for messages and docs)."""
    if spec.choices:
        names = ", ".join(repr(c) for c in spec.choices)
        return f"a list of names from {names}" if spec.type is list else f"one of {names}"
    kind = spec.type.__name__ if spec.type is not list else "list of numbers"
    if spec.low is not None or spec.high is not None:
        lo = ("(" if spec.low_open or spec.low is None else "[") + ("-inf" if spec.low is None else f"{spec.low}")
        hi = ("inf" if spec.high is None else f"{spec.high}") + (")" if spec.high_open or spec.high is None else "]")
        return f"{kind} in {lo}, {hi}"
    return kind


def close_matches(key: str, keys: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(keys), n=3)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def validate_value(label: str, spec: Option, value: Any) -> Any:
    """``value`` converted to the spec's type (strings from the command line are parsed) and
    checked against its range and choices; ConfigError naming ``label`` otherwise."""
    kind = spec.type
    bad = ConfigError(f"config key {label!r}: value {value!r} is not allowed; expected {allowed(spec)}")
    if kind is list and spec.choices:
        return _names(spec, value, bad)
    value = _coerce(kind, value, bad)
    if spec.choices and value not in spec.choices:
        raise bad
    for number in (value if isinstance(value, list) else [value]):   # a list's bounds hold for each element
        if isinstance(number, (int, float)) and not isinstance(number, bool) and not _in_range(spec, number):
            raise bad
    return value


def _names(spec: Option, value: Any, bad: ConfigError) -> list:
    """A list of names, each one of the choices (``report_to``): from TOML a list of strings, from the
    command line names separated by commas; '' or 'none' is the empty list (as in Hugging Face's
    ``report_to``). A name given twice counts once."""
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none") else [n.strip() for n in value.split(",")]
    if not isinstance(value, (list, tuple)) or any(n not in spec.choices for n in value):
        raise bad
    return list(dict.fromkeys(value))


def _in_range(spec: Option, x: float) -> bool:
    if isinstance(x, float) and not math.isfinite(x):
        return False
    if spec.low is not None and (x < spec.low or (spec.low_open and x == spec.low)):
        return False
    return not (spec.high is not None and (x > spec.high or (spec.high_open and x == spec.high)))


def _coerce(kind: type, value: Any, bad: ConfigError) -> Any:
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise bad
                return text.lower() in ("true", "1", "yes")
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
            if kind is list:
                return [float(x) for x in text.strip("[]").split(",") if x.strip()]
        except ValueError:
            raise bad from None
    if kind is bool and not isinstance(value, bool):
        raise bad
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            return float(value)
        except OverflowError:
            raise bad from None
    if kind is str and not isinstance(value, str):
        raise bad
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        try:
            return [float(x) for x in value]
        except (TypeError, ValueError, OverflowError):
            raise bad from None
    return value
