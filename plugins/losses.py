"""Built-in wml plugin module (losses); its hooks are added by the issue that builds it."""
