"""What a method of ``wml compare`` stands for: a loss, an updater and a few config keys.

The built-in names are the six rows of the seed card's question, plus ``wml_champion``: WML with the
seed card's own recipe (the ``babylm-champion`` preset), so that a comparison can answer "and the
author's settings?". Any registered loss and updater, a third party's included, can be named as
``LABEL=LOSS/UPDATER`` (optionally ``/HYPERGRADIENT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import PRESETS, ConfigError

__all__ = ["Method", "CHAMPION_PRESET", "CHAMPION_LEFT_OUT", "champion_method", "BUILTIN_METHODS",
           "DEFAULT_METHODS", "parse_methods"]


@dataclass(frozen=True)
class Method:
    """One row of a comparison. ``ensemble`` says how its ensemble's ω came about."""

    label: str
    title: str
    loss: str
    updater: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    ensemble: str = "learned ω"
    #: a preset the settings come from, and the preset's keys left out, each with why
    preset: str = ""
    left_out: Mapping[str, str] = field(default_factory=dict)

    def config_values(self) -> dict:
        return {"loss": self.loss, "updater": self.updater, **dict(self.settings)}

    def to_dict(self) -> dict:
        out = {"label": self.label, "title": self.title, "loss": self.loss, "updater": self.updater,
               "settings": dict(self.settings), "ensemble": self.ensemble}
        if self.preset:
            out.update(preset=self.preset, from_preset=[k for k in self.settings if k in PRESETS[self.preset]],
                       left_out=dict(self.left_out))
        return out


CHAMPION_PRESET = "babylm-champion"
_SAME_PEERS = "peer sizing: every method of a seed starts from the same peers (paired comparison)"
#: the preset's keys a comparison cannot take from it, and why: what every arm must share, or the budget sets
CHAMPION_LEFT_OUT = {
    "max_steps": "the run's length is the comparison's: its budget (or max_steps), for every method alike; "
                 "with a budget the card's 100 steps are kept (budget_steps) and num_batches is scaled to fit",
    "lr_decay_iters": "follows the run's length (the budget's steps, or the comparison's value)",
    "omega_decay_iters": "follows the run's length (⌈budget steps / outer_every⌉, or the comparison's value)",
    "enable_early_stopping": "the comparison's, the same for every method",
    "bayesian_init_points": _SAME_PEERS, "bayesian_n_iter": _SAME_PEERS,
    "prune_importance": _SAME_PEERS, "layer_bound": _SAME_PEERS,
}


def champion_method() -> Method:
    """WML with the seed card's recipe, read from the preset (one source of truth), less what a
    comparison holds equal or its budget decides (:data:`CHAMPION_LEFT_OUT`). The hypergradient,
    which the preset does not name, is the ``wml`` arm's (exact)."""
    preset = PRESETS[CHAMPION_PRESET]
    settings = {k: v for k, v in preset.items() if k not in CHAMPION_LEFT_OUT}
    # with a budget, its schedule (100 steps, 20 outer steps) is kept and the batch scaled to the data
    settings["budget_steps"] = preset["max_steps"]
    return Method("wml_champion", "WML, the seed card's recipe (babylm-champion preset)", "wml", "mirror",
                  {**settings, "hypergradient": "exact"}, preset=CHAMPION_PRESET,
                  left_out={k: why for k, why in CHAMPION_LEFT_OUT.items() if k in preset})


BUILTIN_METHODS: dict[str, Method] = {m.label: m for m in (
    Method("wml", "WML (exact hypergradient)", "wml", "mirror", {"hypergradient": "exact"}),
    Method("wml_adam", "WML, Adam-aware hypergradient", "wml", "mirror", {"hypergradient": "exact_adam"}),
    Method("wml_first_order", "WML, first-order hypergradient", "wml", "mirror", {"hypergradient": "first_order"}),
    Method("dml", "Deep Mutual Learning (uniform ω)", "wml", "uniform", ensemble="uniform ω"),
    Method("kd", "teacher-guided KD (Baby Llama)", "kd", "uniform", ensemble="uniform ω (peers trained apart)"),
    Method("ce", "no sharing (CE alone)", "ce", "uniform", ensemble="uniform ω (peers trained apart)"),
    champion_method(),
)}
#: the seed card's six rows; ``wml_champion`` is asked for by name (its blocks of 512 and 60 micro-batches
#: a step make it the slowest arm by far, and it changes the shared teacher's block length)
DEFAULT_METHODS = ("wml", "wml_adam", "wml_first_order", "dml", "kd", "ce")

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
