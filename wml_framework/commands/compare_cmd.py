"""``wml compare``: every method on the same peers, teacher, data and budget, over several seeds."""

from __future__ import annotations

import shlex
import sys

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


@click.command("compare", epilog="Methods: wml, wml_adam, wml_first_order, dml, kd, ce (default: all), or "
                                     "LABEL=LOSS/UPDATER[/HYPERGRADIENT] for any installed plugins. docs/compare.md.")
@config_options
@click.option("--methods", default=None, metavar="M1,M2,…", help="Methods to compare (default: the six rows of the seed card; wml_champion, the seed card's recipe, by name).")
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per method: seed, seed+1, … (the config key `seed` is the first).")
@click.option("--baseline", default=None, help="Method the paired differences are taken against (default: wml).")
@click.option("--tuned", "tuned_dir", type=click.Path(file_okay=False), default=None,
              help="A `wml tune` folder: each method tuned there runs with its tuned settings (the tuning's seed must "
                   "not be one of these seeds).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Comparison folder; the same command again continues it.")
@launch_options
@one_line_errors
def command(config_path, preset, overrides, init, updater, loss, objective, teacher, corpus, methods, num_seeds,
            baseline, tuned_dir, out, jobs, launcher, slurm_options) -> None:
    """Answer "does peer sharing beat teacher-guided distillation?" on your data: train every method on
    the same peers, teacher, data order and token budget for several seeds, and compare them."""
    from .. import config as cfgmod
    from ..compare import make_plan, parse_methods, run_compare
    from ..plugin_system.host import PluginHost

    if loss or updater:
        raise click.UsageError("--loss and --updater are chosen by each method; name methods with --methods "
                               "(LABEL=LOSS/UPDATER for your own)")
    launch = resolve_launch(jobs, launcher, slurm_options)
    cfg = resolve_config(config_path, preset, overrides, init=init, objective=objective, teacher=teacher, corpus=corpus)
    try:
        chosen, record = parse_methods(methods, host=host()), None
        if tuned_dir is not None:
            from ..compare.tuned import apply_tuned

            chosen, record = apply_tuned(tuned_dir, cfg, chosen, num_seeds)
        plan = make_plan(cfg, chosen, num_seeds, out, baseline=baseline, host=host(), tuned=record)
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731 - progress to stderr, the result's path to stdout
    command_line = "wml " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    until_stopped(lambda: run_compare(plan, make_host=PluginHost, say=say, command=command_line, launch=launch),
                  unit="member", whole="comparison")
    click.echo(str(plan.out / "comparison.md"))
