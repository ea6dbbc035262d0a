"""``wml plugins``: what is registered, by kind, and which package it came from."""

from __future__ import annotations

import json

import click

from ..plugins import KIND_HOOKS, get_host

PLURALS = {"family": "model families", "initializer": "peer initializers", "loss": "losses",
           "updater": "weight updaters", "evaluator": "evaluators"}


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def command(as_json: bool) -> None:
    """List every registered plugin by kind."""
    host = get_host()
    data = {
        kind: [
            {"name": e.name, "plugin": e.plugin, "package": e.distribution, "help": e.help}
            for e in host.entries(kind)
        ]
        for kind in KIND_HOOKS
    }
    if as_json:
        click.echo(json.dumps({"kinds": list(KIND_HOOKS), "plugins": data}, indent=2))
        return
    for kind, rows in data.items():
        click.secho(PLURALS[kind], bold=True)
        if not rows:
            click.echo("  (none)")
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            click.echo(f"  {r['name']:<{width}}  {r['help']}  [{r['plugin']} · {r['package']}]")
