"""wml: compress a language model into a family of peers by weighted mutual learning."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("wml-framework")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .hookspecs import hookimpl  # noqa: E402  - the one name plugin authors need

__all__ = ["__version__", "hookimpl"]
