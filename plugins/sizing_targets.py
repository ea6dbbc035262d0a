"""The size error and the table rows both initializers report (targets: ``api.peer_targets``)."""

from __future__ import annotations

from wml_framework.api import peer_targets  # noqa: F401 - re-exported: the rule lives in the core


def rel_error(parameters: int, target: int) -> float:
    """|P − target| / target, the quantity both initializers minimise and report."""
    return abs(int(parameters) - int(target)) / int(target)


def table_row(peer: int, shape: str, parameters: int, target: int) -> dict:
    """One row of ``init_table.json``."""
    return dict(peer=int(peer), shape=shape, parameters=int(parameters), target=int(target),
                rel_error=rel_error(parameters, target))

