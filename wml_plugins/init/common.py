"""What both built-in initializers share: the size error they minimise, and the checks that open
their ``check()`` (the family, its protocol, the targets)."""

from __future__ import annotations

__all__ = ["rel_error", "check_family", "check_request", "check_targets"]


def rel_error(parameters: int, target: int) -> float:
    """|P − target| / target, the quantity both initializers minimise and report."""
    return abs(int(parameters) - int(target)) / int(target)


def check_family(teacher_config, family) -> None:
    """The family object must describe the teacher's architecture."""
    if getattr(teacher_config, "model_type", None) != family.model_type:
        raise ValueError(f"family {family.name!r} handles model_type {family.model_type!r}, "
                         f"but the teacher is {getattr(teacher_config, 'model_type', None)!r}")


def check_request(who: str, teacher_config, family, targets, protocol: type, cannot: str) -> None:
    """The opening of both initializers' ``check()``: the family describes the teacher, implements
    ``protocol`` (a ``runtime_checkable`` protocol of :mod:`wml_framework.api`; ``cannot`` says what
    it lacks, e.g. "be sized: it lacks count_shapes"), and there is at least one target."""
    check_family(teacher_config, family)
    if not isinstance(family, protocol):
        raise ValueError(f"{who}: family {family.name!r} cannot {cannot} (see wml_framework.api.{protocol.__name__})")
    if not targets:
        raise ValueError(f"{who}: no peer targets (the number of peers M must be at least 1)")


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
