"""``wml report``: plots and a markdown report of a run folder."""

from __future__ import annotations

import click

from ._support import one_line_errors

__all__ = ["command"]


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@one_line_errors
def command(run_dir: str) -> None:
    """Write RUN_DIR/plots/*.png and RUN_DIR/report.md (curves, ω, size vs loss and accuracy, results table)."""
    from ..report import write_report

    report = write_report(run_dir)
    for stem, path in report.plots.items():
        click.echo(f"plot  {path}")
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {report.path}")
