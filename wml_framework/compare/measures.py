"""The quality measures a comparison reports, read from each member's ``eval.json`` (a leaf: the
tables and the plots both read it)."""

__all__ = ["MEASURES"]

#: the two quality measures, how they are read from eval.json, and which direction is better
MEASURES = {
    "heldout_loss": {"title": "held-out loss", "evaluator": "perplexity", "key": "loss", "better": "lower"},
    "min_pairs": {"title": "min. pairs (macro)", "evaluator": "minimal_pairs", "key": "macro_accuracy",
                  "better": "higher"},
}
