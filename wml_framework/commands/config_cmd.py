"""``wml config``: the resolved configuration (defaults, preset, file, overrides) as TOML."""

from __future__ import annotations

import click

from .. import config as cfgmod
from .run_cmd import config_options, resolve_config


@click.command("config")
@config_options
@click.option("--markdown", is_flag=True, help="Print the table of every key (docs/config.md) instead.")
def command(config_path, preset, overrides, init, updater, loss, teacher, corpus, markdown) -> None:
    """Show the configuration a run would use, validated, without running anything."""
    if markdown:
        click.echo(cfgmod.markdown_table(), nl=False)
        return
    try:
        cfg = resolve_config(config_path, preset, overrides, init=init, updater=updater, loss=loss,
                             teacher=teacher, corpus=corpus)
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(cfgmod.dumps(cfg), nl=False)
