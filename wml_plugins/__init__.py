"""The built-in torch plugins of wml, registered through the ``wml`` entry-point group."""

__all__ = []
