"""``wml verify``: numerical checks of every registered loss and updater (plugin authors' test)."""

from __future__ import annotations

import json
import sys

import click

from ._support import host, one_line_errors

__all__ = ["command"]


@click.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Check only the loss/updater of this name (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random test problems.")
@one_line_errors
def command(as_json: bool, only: tuple[str, ...], seed: int) -> None:
    """Check every loss and updater in float64: finite differences, invariants, and the reference
    points each plugin declares (the built-ins: the numpy oracle wml_reference). Exits with
    status 1 if any check fails."""
    from ..config import close_matches
    from ..verify import format_table, run_checks, unverified

    h = host()
    known = set(h.names("loss")) | set(h.names("updater"))
    unknown = sorted(set(only) - known)
    if unknown:
        other = [f"{n!r} is {kind}" for n in unknown for kind in ("a model family", "an initializer", "an evaluator")
                 if n in h.names({"a model family": "family", "an initializer": "initializer",
                                  "an evaluator": "evaluator"}[kind])]
        why = f" ({'; '.join(other)}: verify checks losses and updaters)" if other else close_matches(unknown[0], known)
        raise click.BadParameter(f"no loss or updater named {', '.join(map(repr, unknown))}{why}; "
                                 f"valid: {', '.join(sorted(known))}", param_hint="--only")
    results = run_checks(h, seed=seed, names=list(only) or None)
    failed = [r for r in results if not r.passed]
    if as_json:
        click.echo(json.dumps({"passed": not failed, "seed": seed, "failed": len(failed),
                               "checks": [r.to_dict() for r in results]}, indent=2))
    else:
        click.echo(format_table(results))
        for note in unverified(results, h):
            click.echo(f"note: {note}")
        click.echo(f"\n{len(results) - len(failed)} of {len(results)} checks passed"
                   + (f"; {len(failed)} FAILED" if failed else "."))
    if failed:
        sys.exit(1)
