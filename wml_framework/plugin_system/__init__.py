"""The plugin system: the host that loads plugins from entry points (:mod:`.host`), the
``register`` callables hooks receive and the checks on what they register (:mod:`.registration`),
run-time guards around what a plugin returns (:mod:`.guards`), what a valid ω is (:mod:`.simplex`)
and option values (:mod:`.validation`).

The contract itself, what a plugin implements and receives, is :mod:`wml_framework.api`, and the
hook specifications are :mod:`wml_framework.hookspecs` (both public, beside this package).

May import: :mod:`wml_framework.api`, :mod:`wml_framework.hookspecs`, :mod:`wml_framework.runtime`,
pluggy. Not the configuration: the configuration is checked against the host, not the reverse.
"""

__all__ = []
