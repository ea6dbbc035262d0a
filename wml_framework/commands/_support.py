"""What every command shares: the plugin host (with its failures reported once), plugin-name
options, the configuration options and their resolution, and one-line errors.

Why here: ``wml run``, ``wml config``, ``wml init-peers`` and ``wml eval`` must parse and
validate a configuration the same way, and a broken plugin must cost one warning line, never a
traceback, in every command.
"""

from __future__ import annotations

import errno
import sys
import warnings

import click

from .. import config as cfgmod
from ..plugin_system.host import PluginHost, PluginWarning, get_host

#: errors of the file system that are the machine's, not the program's: one line, not a traceback
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def host() -> PluginHost:
    """The command line's plugin host; its failures and notes are printed once per process, as
    lines (the Python warnings they also raise are silenced here: one report is enough)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        h = get_host()
    if not h.reported:
        for line in h.report_lines():
            click.echo(f"warning: {line}", err=True)
    return h


class PluginName(click.ParamType):
    """A name registered for one plugin kind; an unknown name lists the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"{kind}"

    def convert(self, value, param, ctx):
        h = host()
        valid = h.names(self.kind)
        if value not in valid:
            self.fail(f"unknown {self.kind} {value!r}; valid names: {', '.join(valid) or '(none)'}"
                      + h.failure_note(self.kind, value), param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in host().names(self.kind) if n.startswith(incomplete)]

    def get_metavar(self, param, ctx=None):
        return f"[{'|'.join(host().names(self.kind))}]"


def plugin_option(flag: str, kind: str, help: str, default=None):  # noqa: A002
    """``--init`` / ``--updater`` / ``--loss`` …: one option factory for every plugin kind."""
    return click.option(flag, type=PluginName(kind), default=default, help=help, show_default=default is not None)


def config_options(fn):
    """Options shared by every command that builds a run configuration."""
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of config keys."),
        click.option("--preset", type=click.Choice(sorted(cfgmod.PRESETS)), help="Named set of config values."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key, or a plugin option as NAME.OPTION=VALUE (repeatable)."),
        plugin_option("--init", "initializer", "Peer initializer."),
        plugin_option("--updater", "updater", "Peer-weight updater."),
        plugin_option("--loss", "loss", "Inner-loop loss."),
        plugin_option("--objective", "objective", "Training objective: causal, masked or hybrid (docs/objectives.md)."),
        click.option("--teacher", type=click.Path(file_okay=False), help="Hugging Face teacher directory."),
        click.option("--corpus", type=click.Path(), help="Text file or folder of text files."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def launch_options(fn):
    """``--jobs``, ``--launcher`` and ``--slurm``: how the independent runs of ``wml compare`` and
    ``wml tune`` are spread over processes or cluster jobs (wml_framework/compare/jobs.py)."""
    from ..compare.jobs import LAUNCHERS, SLURM_KEYS

    opts = [
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Runs at a time: local processes (the cores divided between them), or SLURM jobs queued at once."),
        click.option("--launcher", type=click.Choice(LAUNCHERS), default="local", show_default=True,
                     help="'local': processes here; 'slurm': a SLURM job per run through submitit; 'submitit-local': "
                          "submitit's jobs on this machine (the cluster path, tried without a cluster)."),
        click.option("--slurm", "slurm_options", multiple=True, metavar="KEY=VALUE",
                     help=f"SLURM option (repeatable): {', '.join(SLURM_KEYS)}."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def resolve_launch(jobs: int, launcher: str, slurm_options):
    """The options of :func:`launch_options` as one checked object (a bad one is a usage error)."""
    from ..compare.jobs import Launch

    try:
        return Launch.parse(jobs, launcher, slurm_options)
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def until_stopped(work, *, unit: str, whole: str):
    """Run ``work()`` (a comparison, a tuning); a signal becomes one line saying that the same command
    continues ``whole`` and the shell's exit status, never a traceback. ``unit``: what was running."""
    from ..runtime.interrupts import Interrupted

    try:
        return work()
    except Interrupted as exc:
        click.echo(f"\n{exc.name}: stopped (the {unit}'s checkpoint is written); the same command continues the {whole}",
                   err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; the same command continues the {whole}", err=True)
        sys.exit(130)


def resolve_config(config_path=None, preset=None, overrides=(), **named) -> cfgmod.WMLConfig:
    """Defaults < preset < TOML < ``--set`` < the named options (``--init``, ``--peers`` …),
    validated against the command line's plugins; a problem is a one-line usage error."""
    try:
        values = cfgmod.parse_overrides(overrides)
        values.update({k: v for k, v in named.items() if v is not None})
        return cfgmod.load(config_path, preset=preset, overrides=values, host=host())
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def one_line_errors(fn):
    """Run a command body; the project's own exceptions become one line on stderr and exit 2
    (a user's input) or 1 (a plugin's fault), never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..evaluation.scoring import EvaluationError
        from ..plugin_system.host import (
            PluginError,
            PluginSettingsError,
            UnknownPluginError,
        )
        from ..runner import RunError
        from ..runtime.distributed import DistributedError
        from ..runtime.run_lock import RunLockedError
        from ..training.families import UnknownFamilyError
        from ..training.loop import TrainingError
        from ..training.run_plugins import TeacherPluginsMissing
        from ..training.teacher import TeacherError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PluginWarning)  # host() prints them as lines
                return fn(*args, **kwargs)
        except (cfgmod.ConfigError, RunError, TeacherError, UnknownFamilyError, EvaluationError, RunLockedError,
                PluginSettingsError, UnknownPluginError, TeacherPluginsMissing) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except (PluginError, TrainingError, DistributedError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"Error: cannot write{where}: {exc.strerror or exc}; every file written so far is whole, "
                       "and the run can be resumed once there is room", err=True)
            sys.exit(1)

    return wrapper
