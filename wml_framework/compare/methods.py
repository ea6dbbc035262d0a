"""What a method of ``wml compare`` stands for: a loss, an updater and a few config keys.

The built-in names are the six rows of the seed card's question; any registered loss and updater,
a third party's included, can be named as ``LABEL=LOSS/UPDATER`` (optionally ``/HYPERGRADIENT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import ConfigError

__all__ = ["Method", "BUILTIN_METHODS", "DEFAULT_METHODS", "parse_methods"]


@dataclass(frozen=True)
class Method:
    """One row of a comparison. ``ensemble`` says how its ensemble's ω came about."""

    label: str
    title: str
    loss: str
    updater: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    ensemble: str = "learned ω"

    def config_values(self) -> dict:
        return {"loss": self.loss, "updater": self.updater, **dict(self.settings)}

    def to_dict(self) -> dict:
        return {"label": self.label, "title": self.title, "loss": self.loss, "updater": self.updater,
                "settings": dict(self.settings), "ensemble": self.ensemble}


BUILTIN_METHODS: dict[str, Method] = {m.label: m for m in (
    Method("wml", "WML (exact hypergradient)", "wml", "mirror", {"hypergradient": "exact"}),
    Method("wml_adam", "WML, Adam-aware hypergradient", "wml", "mirror", {"hypergradient": "exact_adam"}),
    Method("wml_first_order", "WML, first-order hypergradient", "wml", "mirror", {"hypergradient": "first_order"}),
    Method("dml", "Deep Mutual Learning (uniform ω)", "wml", "uniform", ensemble="uniform ω"),
    Method("kd", "teacher-guided KD (Baby Llama)", "kd", "uniform", ensemble="uniform ω (peers trained apart)"),
    Method("ce", "no sharing (CE alone)", "ce", "uniform", ensemble="uniform ω (peers trained apart)"),
)}
DEFAULT_METHODS = tuple(BUILTIN_METHODS)

_CUSTOM = re.compile(r"^(?P<label>[A-Za-z0-9_.-]+)=(?P<loss>[^/\s]+)/(?P<updater>[^/\s]+)(?:/(?P<hg>[^/\s]+))?$")


def parse_methods(text: str | None, host=None) -> list[Method]:
    """Comma-separated built-in names and ``LABEL=LOSS/UPDATER[/HYPERGRADIENT]`` entries; names
    of losses and updaters are checked against ``host`` (the installed plugins)."""
    if text is None or not text.strip():
        return [BUILTIN_METHODS[n] for n in DEFAULT_METHODS]
    methods: list[Method] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item in BUILTIN_METHODS:
            methods.append(BUILTIN_METHODS[item])
            continue
        m = _CUSTOM.match(item)
        if m is None:
            raise ConfigError(f"--methods: {item!r} is neither a built-in method ({', '.join(BUILTIN_METHODS)}) "
                              "nor LABEL=LOSS/UPDATER[/HYPERGRADIENT]")
        settings = {"hypergradient": m["hg"]} if m["hg"] else {}
        updater_kind = "learned ω" if m["updater"] == "mirror" else f"ω of updater {m['updater']!r}"
        methods.append(Method(m["label"], f"{m['loss']} + {m['updater']}" + (f" ({m['hg']})" if m["hg"] else ""),
                              m["loss"], m["updater"], settings, updater_kind))
    if not methods:
        raise ConfigError("--methods: no method given")
    labels = [m.label for m in methods]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"--methods: {twice[0]!r} is named twice")
    if host is not None:
        for m in methods:
            for kind, name in (("loss", m.loss), ("updater", m.updater)):
                valid = host.names(kind)
                if name not in valid:
                    raise ConfigError(f"--methods: method {m.label!r} names unknown {kind} {name!r}; "
                                      f"valid: {', '.join(valid)}")
    return methods
