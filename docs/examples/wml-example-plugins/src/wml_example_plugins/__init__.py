"""Example third-party wml plugins, one of each kind; each module is a plugin of its own."""

__version__ = "0.1.0"
