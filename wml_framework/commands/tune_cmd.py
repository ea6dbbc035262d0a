"""``wml tune``: Bayesian optimization of a method's settings, each trial an ordinary run folder."""

from __future__ import annotations

import click

from ._support import (
    config_options,
    host,
    launch_options,
    one_line_errors,
    resolve_config,
    resolve_launch,
    until_stopped,
)

__all__ = ["command"]


@click.command("tune", epilog="Methods as in `wml compare`: wml, wml_adam, wml_first_order, dml, kd, ce, or "
                                  "LABEL=LOSS/UPDATER[/HYPERGRADIENT]. Default spaces and the objective: docs/tune.md.")
@config_options
@click.option("--method", "methods", required=True, metavar="M[,M2…]", help="Method(s) to tune, one after another.")
@click.option("--trials", type=click.IntRange(min=1), default=16, show_default=True,
              help="Trials per method; the first quarter (at least 2) are random draws.")
@click.option("--space", "space", multiple=True, metavar="KEY=LOW:HIGH[:log][:int]",
              help="Search KEY in this range (replaces or adds to the method's default space; KEY=fixed keeps the "
                   "config's value). Repeatable.")
@click.option("--retry-failed", is_flag=True, help="Run failed trials again, with their same values.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Tuning folder; the same command again continues it.")
@launch_options
@one_line_errors
def command(config_path, preset, overrides, init, updater, loss, objective, teacher, corpus, methods, trials, space,
            retry_failed, out, jobs, launcher, slurm_options) -> None:
    """Tune each method's learning rate and loss/ω settings on the config's seed (leave that seed out of
    `wml compare --tuned`); the objective is the ensemble's loss on the ω half of the held-out split."""
    from .. import config as cfgmod
    from ..compare import parse_methods
    from ..compare.tune import make_tune_plan, run_tune
    from ..plugin_system.host import PluginHost

    if loss or updater:
        raise click.UsageError("--loss and --updater are chosen by each method; name methods with --method "
                               "(LABEL=LOSS/UPDATER for your own)")
    launch = resolve_launch(jobs, launcher, slurm_options)
    cfg = resolve_config(config_path, preset, overrides, init=init, objective=objective, teacher=teacher, corpus=corpus)
    try:
        chosen = parse_methods(methods, host=host())
        plan = make_tune_plan(cfg, chosen, trials, out, space=space, host=host())
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc).replace("--methods", "--method")) from None
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731 - progress to stderr, the result's path to stdout
    until_stopped(lambda: run_tune(plan, make_host=PluginHost, say=say, launch=launch, retry_failed=retry_failed),
                  unit="trial", whole="tuning")
    click.echo(str(plan.out / "tuned.json"))
