"""Click parameter types shared by every command, so plugin names are checked one way."""

from __future__ import annotations

import click

from .plugins import PluginError, get_host


class PluginName(click.ParamType):
    """A name registered for one plugin kind; an unknown name lists the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"{kind}"

    def convert(self, value, param, ctx):
        try:
            valid = get_host().names(self.kind)
        except PluginError as exc:
            self.fail(str(exc), param, ctx)
        if value not in valid:
            self.fail(f"unknown {self.kind} {value!r}; valid names: {', '.join(valid)}", param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in get_host().names(self.kind) if n.startswith(incomplete)]

    def get_metavar(self, param, ctx=None):
        return f"[{'|'.join(get_host().names(self.kind))}]"


def plugin_option(flag: str, kind: str, help: str, default=None):  # noqa: A002
    """``--init`` / ``--updater`` / ``--loss`` …: one option factory for every plugin kind."""
    return click.option(flag, type=PluginName(kind), default=default, help=help, show_default=default is not None)
