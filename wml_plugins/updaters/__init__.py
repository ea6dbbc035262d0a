"""Built-in peer-weight updaters: ``mirror`` (method.md §4), ``uniform`` (Deep Mutual Learning), ``fixed``.

Each is registered as a factory ``make(cfg: WMLConfig, num_peers)``; the object it returns moves ω
on the simplex with ``step(ctx: OuterContext) -> UpdateResult``. Each declares the reference
points ``wml verify`` checks it against (``references.py``).
"""

from wml_framework import hookimpl
from wml_framework.api import ReferencePoint

from . import references as ref
from .constant import make_fixed, make_uniform
from .mirror import make_mirror

__all__ = ["WML", "wml_register_updaters"]

WML = {"loss": "wml"}  # the hypergradient of wml_reference is that of the WML loss


@hookimpl
def wml_register_updaters(register):
    register("mirror", make_mirror,
             help="Mirror descent on ω along the exact one-step hypergradient (SGD or Adam-aware step, or first-order); η warm-up + cosine.",
             references=[
                 ReferencePoint("exact hypergradient, η schedule, mirror step = wml_reference", ref.mirror_exact, WML),
                 ReferencePoint("hypergradient = finite differences of F(ω)", ref.mirror_finite_differences, WML,
                                tolerance=1e-6),
                 ReferencePoint("Adam-aware hypergradient (exact_adam) = wml_reference with its preconditioner",
                                ref.mirror_exact_adam, {**WML, "hypergradient": "exact_adam"}),
                 ReferencePoint("exact_adam hypergradient = finite differences of the preconditioned F(ω)",
                                ref.mirror_exact_adam_finite_differences, {**WML, "hypergradient": "exact_adam"},
                                tolerance=1e-6),
                 ReferencePoint("first-order hypergradient = wml_reference", ref.mirror_first_order,
                                {**WML, "hypergradient": "first_order"}),
             ])
    register("uniform", make_uniform, help="ω fixed at 1/M (Deep Mutual Learning).",
             references=[ReferencePoint("ω = 1/M", ref.uniform, tolerance=1e-12)])
    register("fixed", make_fixed, help="ω fixed at fixed_omega, normalised to sum 1.",
             references=[ReferencePoint("ω = fixed_omega / Σ fixed_omega", ref.fixed, tolerance=1e-12)])
