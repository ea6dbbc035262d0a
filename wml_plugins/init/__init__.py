"""Built-in peer initializers: ``bayes`` (sizing by Bayesian optimization) and ``l1`` (structured pruning)."""

__all__ = []
