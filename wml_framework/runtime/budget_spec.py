"""The syntax of a training budget: ``"2 epochs"``, ``"300k words"``, ``"1.5M tokens"``.

Why a module of its own, this low: the configuration checks a budget's syntax when it is validated
(before any work), and training resolves it into steps once the data is known
(:mod:`wml_framework.training.budget`); both read the text with this one parser. Amounts are exact
fractions, never floats, so that a resumed run, which parses the saved text again, lands on the same
step count bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

__all__ = ["UNITS", "PEERS", "ALLOWED", "ALLOWED_TEACHER", "BudgetSpec", "parse_budget"]

#: what a budget may count, by the words a user may write for it
UNITS = {"epoch": "epochs", "epochs": "epochs", "word": "words", "words": "words", "token": "tokens",
         "tokens": "tokens"}
#: ``teacher_budget``'s extra value: as many tokens as one peer's budget
PEERS = "peers"
_SCALE = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
_SYNTAX = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<scale>[kKMBG]?)\s+(?P<unit>[A-Za-z]+)\s*$")
ALLOWED = ("'' (use max_steps) or a positive amount and a unit: '2 epochs', '1.5 epochs', '300000 words', "
           "'300k words', '2M words', '1.5M tokens' (k, M, B multiply by a thousand, a million, a billion)")
ALLOWED_TEACHER = ALLOWED.replace("'' (use max_steps)", "'' (use teacher_steps), 'peers' (one peer's tokens)")


@dataclass(frozen=True)
class BudgetSpec:
    """A parsed budget: ``amount`` of ``unit`` (epochs, words or tokens), and the text it came from."""

    amount: Fraction
    unit: str
    text: str


def parse_budget(text: str, allowed: str = ALLOWED) -> Optional[BudgetSpec]:
    """The budget ``text`` names, or None for ``""`` (no budget); raises ValueError whose text says what
    is expected (``allowed`` for a syntax error), for the caller to put after the key and the value.

    Words and tokens must come out whole ("1.5k words" is 1,500; "1.5 words" is refused); epochs may
    be fractional."""
    if not text.strip():
        return None
    m = _SYNTAX.match(text)
    unit = UNITS.get(m["unit"].lower()) if m else None
    if unit is None:
        raise ValueError(f"expected {allowed}")
    amount = Fraction(m["number"]) * _SCALE[m["scale"]]
    if amount <= 0:
        raise ValueError("expected a positive amount")
    if unit != "epochs" and amount.denominator != 1:
        raise ValueError(f"expected a whole number of {unit}")
    return BudgetSpec(amount, unit, text.strip())
