"""``wml config``: the resolved configuration (defaults, preset, file, overrides) as TOML."""

from __future__ import annotations

import click

from .. import config as cfgmod
from ._support import config_options, host, one_line_errors, resolve_config

__all__ = ["command"]


@click.command("config")
@config_options
@click.option("--markdown", is_flag=True, help="Print the table of every key and plugin option (docs/config.md) instead.")
@one_line_errors
def command(config_path, preset, overrides, init, updater, loss, objective, teacher, corpus, markdown) -> None:
    """Show the configuration a run would use, validated, without running anything."""
    if markdown:
        click.echo(cfgmod.markdown_table(host()), nl=False)
        return
    cfg = resolve_config(config_path, preset, overrides, init=init, updater=updater, loss=loss, objective=objective,
                         teacher=teacher, corpus=corpus)
    click.echo(cfgmod.dumps(cfg), nl=False)
