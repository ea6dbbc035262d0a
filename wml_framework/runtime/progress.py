"""Progress bars for long scoring loops: tqdm on stderr, quiet unless asked or on a terminal."""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "seq"):
    """A tqdm bar to stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, leave=False, unit=unit)
