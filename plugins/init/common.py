"""What both built-in initializers share: the size error they minimise, and the family check."""

from __future__ import annotations


def rel_error(parameters: int, target: int) -> float:
    """|P − target| / target, the quantity both initializers minimise and report."""
    return abs(int(parameters) - int(target)) / int(target)


def check_family(teacher_config, family) -> None:
    """The family object must describe the teacher's architecture."""
    if getattr(teacher_config, "model_type", None) != family.model_type:
        raise ValueError(f"family {family.name!r} handles model_type {family.model_type!r}, "
                         f"but the teacher is {getattr(teacher_config, 'model_type', None)!r}")
