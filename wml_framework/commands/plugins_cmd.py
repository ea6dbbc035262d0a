"""``wml plugins``: what is registered, by kind, which package it came from, and what failed."""

from __future__ import annotations

import json

import click

from ..plugin_system.host import KIND_HOOKS, get_host

__all__ = ["PLURALS", "command"]

PLURALS = {"family": "model families", "initializer": "peer initializers", "loss": "losses",
           "updater": "weight updaters", "evaluator": "evaluators"}


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def command(as_json: bool) -> None:
    """List every registered plugin by kind, with its options, and every plugin that failed."""
    host = get_host()
    data = {
        kind: [
            {"name": e.name, "plugin": e.plugin, "package": e.distribution, "help": e.help,
             "options": {o.key: o.default for o in e.options}, "references": [r.name for r in e.references]}
            for e in host.entries(kind)
        ]
        for kind in KIND_HOOKS
    }
    failures = [{"plugin": f.plugin, "package": f.distribution, "hook": f.hook, "problem": f.problem}
                for f in host.failures]
    if as_json:
        click.echo(json.dumps({"kinds": list(KIND_HOOKS), "plugins": data, "failed": failures,
                               "notes": host.notes}, indent=2))
        return
    for kind, rows in data.items():
        click.secho(PLURALS[kind], bold=True)
        if not rows:
            click.echo("  (none)")
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            click.echo(f"  {r['name']:<{width}}  {r['help']}  [{r['plugin']} · {r['package']}]")
            if r["options"]:
                opts = ", ".join(f"{r['name']}.{k}={v!r}" for k, v in r["options"].items())
                click.echo(f"  {'':<{width}}  options: {opts}")
    if failures or host.notes:
        click.secho("not loaded", bold=True)
        for f in host.failures:
            click.echo(f"  {f.line()}")
        for note in host.notes:
            click.echo(f"  warning: {note}")
