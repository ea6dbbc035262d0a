"""Built-in wml plugin module (families); its hooks are added by the issue that builds it."""
