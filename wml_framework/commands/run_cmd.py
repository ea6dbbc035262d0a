"""``wml run``: build peers from a teacher, train them by WML, evaluate and export them."""

from __future__ import annotations

import sys

import click

from .. import config as cfgmod
from ..cli_types import plugin_option


def config_options(fn):
    """Options shared by every command that builds a run configuration."""
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of config keys."),
        click.option("--preset", type=click.Choice(sorted(cfgmod.PRESETS)), help="Named set of config values."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable)."),
        plugin_option("--init", "initializer", "Peer initializer."),
        plugin_option("--updater", "updater", "Peer-weight updater."),
        plugin_option("--loss", "loss", "Inner-loop loss."),
        click.option("--teacher", type=click.Path(file_okay=False), help="Hugging Face teacher directory."),
        click.option("--corpus", type=click.Path(), help="Text file or folder of .txt files."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def resolve_config(config_path, preset, overrides, **named) -> cfgmod.WMLConfig:
    values = cfgmod.parse_overrides(overrides)
    values.update({k: v for k, v in named.items() if v is not None})
    return cfgmod.load(config_path, preset=preset, overrides=values)


@click.command("run", epilog="Every config key, its default and allowed values: `wml config --markdown` "
                                 "(docs/config.md). `wml config [same options]` shows the resolved configuration.")
@config_options
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<timestamp>).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), help="Continue an interrupted run.")
def command(config_path, preset, overrides, init, updater, loss, teacher, corpus, out, resume_dir) -> None:
    """Train a family of peers with weighted mutual learning."""
    from .. import runner
    from ..teacher import TeacherError

    log = lambda msg: click.echo(msg, err=True)  # noqa: E731 - progress goes to stderr, results to stdout
    target = resume_dir or out or "RUN_DIR"
    try:
        if resume_dir:
            given = [n for n, v in dict(config=config_path, preset=preset, set=overrides, init=init, updater=updater,
                                        loss=loss, teacher=teacher, corpus=corpus, out=out).items() if v]
            if given:
                raise click.UsageError(f"--resume continues a run with its saved config; drop {', '.join('--' + g for g in given)}")
            run_dir = runner.resume(resume_dir, log=log)
        else:
            cfg = resolve_config(config_path, preset, overrides, init=init, updater=updater, loss=loss,
                                 teacher=teacher, corpus=corpus)
            target = out or runner.default_run_dir()
            run_dir = runner.start(cfg, target, log=log)
    except (cfgmod.ConfigError, runner.RunError, TeacherError) as exc:
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue from the last checkpoint with: wml run --resume {target}", err=True)
        sys.exit(130)
    click.echo(str(run_dir))
