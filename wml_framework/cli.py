"""The ``wml`` command line: a click group; each command lives in ``wml_framework.commands``."""

from __future__ import annotations

import importlib

import click

from . import __version__

__all__ = ["COMMANDS", "EPILOG", "LazyGroup", "main"]

#: command name -> module in wml_framework.commands defining ``command``
COMMANDS = {
    "config": "config_cmd",
    "plugins": "plugins_cmd",
    "run": "run_cmd",
    "verify": "verify_cmd",
    "init-peers": "init_peers_cmd",
    "eval": "eval_cmd",
    "report": "report_cmd",
    "compare": "compare_cmd",
    "tune": "tune_cmd",
}


class LazyGroup(click.Group):
    """Imports a command's module only when it is used (torch is slow to import)."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"wml_framework.commands.{COMMANDS[name]}")
        return module.command


#: the environment the commands read, shown under ``wml --help``
EPILOG = """\b
Environment:
  WML_BLOCK_PLUGINS=NAME[,NAME...]  do not load the plugins of these entry-point names
                                    (the 'plugin' column of `wml plugins`, commas or spaces);
                                    `wml plugins` lists them as blocked. docs/plugins.md §1, §12.
"""


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="wml")
def main() -> None:
    """Compress a language model into a family of peers by weighted mutual learning."""


if __name__ == "__main__":  # pragma: no cover
    main()
