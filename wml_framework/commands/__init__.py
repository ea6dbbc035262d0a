"""One module per ``wml`` command, each defining ``command`` (a click command); :mod:`wml_framework.cli`
imports a command's module only when that command runs.

These modules import the rest of the core inside their command functions, on purpose: ``wml --help``
and ``wml COMMAND --help`` then load click and nothing else (torch and transformers take seconds to
import). They are the only late imports of the core that stay; everywhere else an import sits at
the top of its module, where the import graph (``tests/test_architecture.py``) sees it.

May import: every other part of :mod:`wml_framework` (this is the top floor, with ``cli``).
"""

__all__ = []
