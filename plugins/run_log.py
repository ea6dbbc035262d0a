"""Built-in wml plugin module (run_log); its hooks are added by the issue that builds it."""
