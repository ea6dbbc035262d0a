"""``wml run``: build peers from a teacher, train them by WML, evaluate and export them."""

from __future__ import annotations

import os
import sys

import click

from ._support import config_options, host, one_line_errors, resolve_config

__all__ = ["command", "launch"]


@click.command("run", epilog="Every config key, its default and allowed values: `wml config --markdown` "
                                 "(docs/config.md). `wml config [same options]` shows the resolved configuration.")
@config_options
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<timestamp>).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), help="Continue an interrupted run.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Data-parallel processes on this machine: launches torchrun (docs/distributed.md).")
@one_line_errors
def command(config_path, preset, overrides, init, updater, loss, objective, teacher, corpus, out, resume_dir,
            nproc) -> None:
    """Train a family of peers with weighted mutual learning."""
    from .. import config as cfgmod
    from .. import runner
    from ..runtime import distributed
    from ..runtime.interrupts import Interrupted

    log = distributed.main_only(lambda msg: click.echo(msg, err=True))  # progress to stderr, results to stdout
    if resume_dir:
        given = [n for n, v in dict(config=config_path, preset=preset, init=init, updater=updater,
                                    loss=loss, objective=objective, teacher=teacher, corpus=corpus, out=out).items() if v]
        if given:
            raise click.UsageError(f"--resume continues a run with its saved config; drop {', '.join('--' + g for g in given)} "
                                   f"(--set may change: {', '.join(runner.RESUME_KEYS)})")
        overrides_dict = cfgmod.parse_overrides(overrides)
        device = overrides_dict.get("device") or _saved_device(resume_dir)
    else:
        cfg = resolve_config(config_path, preset, overrides, init=init, updater=updater, loss=loss,
                             objective=objective, teacher=teacher, corpus=corpus)
        device = cfg.device
    if nproc is not None and not distributed.launched_by_torchrun():
        target = resume_dir or out or str(runner.default_run_dir())   # one folder, named once for every rank
        args = (["--resume", resume_dir] if resume_dir else ["--out", target]) + _passed_options(
            config_path, preset, overrides, init=init, updater=updater, loss=loss, objective=objective, teacher=teacher,
            corpus=corpus)
        sys.exit(launch(nproc, args, log))
    dist = distributed.init_from_env(device)
    target = resume_dir or dist.broadcast(out or str(runner.default_run_dir()))
    try:
        if resume_dir:
            run_dir = runner.resume(resume_dir, log=log, host=host(), overrides=overrides_dict)
        else:
            run_dir = runner.start(cfg, target, log=log, host=host())
    except Interrupted as exc:
        where = f" after step {exc.step} (checkpoint written)" if exc.step is not None else ""
        log(f"\n{exc.name}: stopped{where}; continue with: wml run --resume {target}{_nproc_hint(dist)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log(f"\ninterrupted; continue from the last checkpoint with: wml run --resume {target}{_nproc_hint(dist)}")
        sys.exit(130)
    except RuntimeError as exc:
        if not (dist.active and distributed.is_peer_failure(exc)):
            raise
        click.echo(f"Error: rank {dist.rank}: another process of this run stopped ({str(exc).splitlines()[0][:160]}); "
                   f"every checkpoint on disk is whole: wml run --resume {target}{_nproc_hint(dist)}", err=True)
        sys.stderr.flush()
        os._exit(1)        # the process group is broken: leaving it cleanly would wait for the lost rank
    finally:
        distributed.shutdown()
    if dist.is_main:
        click.echo(str(run_dir))


def _saved_device(run_dir) -> str:
    from .. import config as cfgmod
    from ..runtime.run_layout import RunLayout

    try:
        return cfgmod.read_toml(RunLayout(run_dir).config).get("device", "auto")
    except (OSError, cfgmod.ConfigError):
        return "auto"                          # the resume itself reports what is wrong with the folder


def _passed_options(config_path, preset, overrides, **named) -> list[str]:
    args = (["--config", config_path] if config_path else []) + (["--preset", preset] if preset else [])
    for item in overrides:
        args += ["--set", item]
    for name, value in named.items():
        if value:
            args += [f"--{name}", str(value)]
    return args


def _nproc_hint(dist) -> str:
    return f" --nproc {dist.world}" if dist.active else ""


def launch(nproc: int, args: list[str], log) -> int:
    """``torchrun --standalone --nproc_per_node N -m wml_framework run ARGS`` (one node; its exit status)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "wml_framework", "run", *args]
    log(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} -m wml_framework run "
        + " ".join(args))
    import signal

    # its own session: a terminal's Ctrl-C reaches torchrun once (through us), not twice; a stopping
    # rank may take a while (the step, then a checkpoint) before torchrun would SIGKILL it
    env = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600", **os.environ}
    child = subprocess.Popen(cmd, start_new_session=True, env=env)

    def forward(signum, frame):  # noqa: ARG001 - torchrun passes SIGINT/SIGTERM to every rank (not SIGUSR1)
        child.send_signal(signal.SIGTERM if signum == signal.SIGUSR1 else signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
