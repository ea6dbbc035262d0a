"""Built-in wml plugin module (init_bayes); its hooks are added by the issue that builds it."""
