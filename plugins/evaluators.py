"""Built-in wml plugin module (evaluators); its hooks are added by the issue that builds it."""
