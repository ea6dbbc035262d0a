"""What both built-in initializers share: the size error they minimise, and the family check."""

from __future__ import annotations

__all__ = ["rel_error", "check_family", "check_targets"]


def rel_error(parameters: int, target: int) -> float:
    """|P − target| / target, the quantity both initializers minimise and report."""
    return abs(int(parameters) - int(target)) / int(target)


def check_family(teacher_config, family) -> None:
    """The family object must describe the teacher's architecture."""
    if getattr(teacher_config, "model_type", None) != family.model_type:
        raise ValueError(f"family {family.name!r} handles model_type {family.model_type!r}, "
                         f"but the teacher is {getattr(teacher_config, 'model_type', None)!r}")


def check_targets(who: str, targets, smallest: int, largest: int, smallest_is: str, largest_is: str = "") -> None:
    """Every target between the smallest model the initializer can make and the teacher's size."""
    if not targets:
        raise ValueError(f"{who}: no peer targets (the number of peers M must be at least 1)")
    for i, target in enumerate(targets):
        if target < smallest:
            raise ValueError(f"{who}: peer {i}'s target of {target:,} parameters is smaller than {smallest_is} "
                             f"({smallest:,} parameters)")
        if target > largest:
            raise ValueError(f"{who}: peer {i}'s target of {target:,} parameters exceeds the teacher's {largest:,}"
                             + (f" ({largest_is})" if largest_is else ""))
