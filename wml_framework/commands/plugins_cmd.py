"""``wml plugins``: what is registered, by kind, which package it came from, the run observers,
the plugins the block list keeps out, and what failed."""

from __future__ import annotations

import json

import click

from ..plugin_system.host import BLOCK_ENV, KIND_HOOKS, PluginHost, get_host

__all__ = ["PLURALS", "command"]

PLURALS = {"family": "model families", "initializer": "peer initializers", "loss": "losses",
           "updater": "weight updaters", "evaluator": "evaluators", "objective": "objectives"}


@click.command("plugins", epilog=f"{BLOCK_ENV}=NAME[,NAME...] (commas or spaces) keeps the plugins of those "
                                 "entry-point names (the 'plugin' of each row's [plugin · package]) from loading; "
                                 "they are listed as blocked.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def command(as_json: bool) -> None:
    """List every registered plugin by kind, with its options, the run observers, the blocked
    plugins, and every plugin that failed."""
    host = get_host()
    data = _collect(host)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for kind in KIND_HOOKS:
        _print_kind(PLURALS[kind], data["plugins"][kind])
    click.secho("run observers", bold=True)
    _print_rows([(o["plugin"], o["help"], f"[{o['package']}]") for o in data["observers"]])
    if data["blocked"]:
        click.secho(f"blocked ({BLOCK_ENV})", bold=True)
        _print_rows([(b["plugin"], "blocked", f"[{b['package']}]") for b in data["blocked"]])
    for title, lines in (("not loaded", host.failure_lines()), ("warnings", data["notes"])):
        if lines:
            click.secho(title, bold=True)
            for line in lines:
                click.echo(f"  {line}")


def _collect(host: PluginHost) -> dict:
    """Everything the command shows, as the JSON it prints (the text is made from it)."""
    plugins = {
        kind: [{"name": e.name, "plugin": e.plugin, "package": e.distribution, "help": e.help,
                "options": {o.key: o.default for o in e.options}, "references": [r.name for r in e.references]}
               for e in host.entries(kind)]
        for kind in KIND_HOOKS
    }
    failed = [{"plugin": f.plugin, "package": f.distribution, "hook": f.hook, "reason": f.reason.value,
               "problem": f.problem} for f in host.failures]
    blocked = [{"plugin": p, "package": d} for p, d in host.blocked_found]
    return {"kinds": list(KIND_HOOKS), "plugins": plugins, "observers": host.observers(), "blocked": blocked,
            "failed": failed, "notes": [*host.notes, *host.block_warnings()]}


def _print_kind(title: str, rows: list[dict]) -> None:
    """One kind's entries; each entry's options on the line below it."""
    click.secho(title, bold=True)
    if not rows:
        click.echo("  (none)")
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        click.echo(f"  {r['name']:<{width}}  {r['help']}  [{r['plugin']} · {r['package']}]")
        if r["options"]:
            opts = ", ".join(f"{r['name']}.{k}={v!r}" for k, v in r["options"].items())
            click.echo(f"  {'':<{width}}  options: {opts}")


def _print_rows(rows: list[tuple[str, str, str]]) -> None:
    """Name, description and origin in aligned columns; '(none)' when empty."""
    if not rows:
        click.echo("  (none)")
    width = max((len(name) for name, _, _ in rows), default=0)
    for name, text, origin in rows:
        click.echo(f"  {name:<{width}}  {text}  {origin}")
