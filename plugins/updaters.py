"""Built-in wml plugin module (updaters); its hooks are added by the issue that builds it."""
