"""Built-in wml plugin module (init_l1); its hooks are added by the issue that builds it."""
