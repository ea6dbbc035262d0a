"""``wml run``: build peers from a teacher, train them by WML, evaluate and export them."""

from __future__ import annotations

import sys

import click

from ..cli_support import config_options, host, one_line_errors, resolve_config


@click.command("run", epilog="Every config key, its default and allowed values: `wml config --markdown` "
                                 "(docs/config.md). `wml config [same options]` shows the resolved configuration.")
@config_options
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<timestamp>).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), help="Continue an interrupted run.")
@one_line_errors
def command(config_path, preset, overrides, init, updater, loss, teacher, corpus, out, resume_dir) -> None:
    """Train a family of peers with weighted mutual learning."""
    from .. import runner

    from .. import config as cfgmod
    from ..interrupts import Interrupted

    log = lambda msg: click.echo(msg, err=True)  # noqa: E731 - progress goes to stderr, results to stdout
    target = resume_dir or out or "RUN_DIR"
    try:
        if resume_dir:
            given = [n for n, v in dict(config=config_path, preset=preset, init=init, updater=updater,
                                        loss=loss, teacher=teacher, corpus=corpus, out=out).items() if v]
            if given:
                raise click.UsageError(f"--resume continues a run with its saved config; drop {', '.join('--' + g for g in given)} "
                                       f"(--set may change: {', '.join(runner.RESUME_KEYS)})")
            run_dir = runner.resume(resume_dir, log=log, host=host(), overrides=cfgmod.parse_overrides(overrides))
        else:
            cfg = resolve_config(config_path, preset, overrides, init=init, updater=updater, loss=loss,
                                 teacher=teacher, corpus=corpus)
            target = out or runner.default_run_dir()
            run_dir = runner.start(cfg, target, log=log, host=host())
    except Interrupted as exc:
        where = f" after step {exc.step} (checkpoint written)" if exc.step is not None else ""
        click.echo(f"\n{exc.name}: stopped{where}; continue with: wml run --resume {target}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue from the last checkpoint with: wml run --resume {target}", err=True)
        sys.exit(130)
    click.echo(str(run_dir))
