"""The quality measures a comparison reports, read from each member's ``eval.json`` per model, and
the measures of a member's peers together, read from its ``summary.json`` (a leaf: the tables and
the plots both read it)."""

__all__ = ["MEASURES", "MEMBER_MEASURES"]

#: the two quality measures, how they are read from eval.json, and which direction is better
MEASURES = {
    "heldout_loss": {"title": "held-out loss", "evaluator": "perplexity", "key": "loss", "better": "lower"},
    "min_pairs": {"title": "min. pairs (macro)", "evaluator": "minimal_pairs", "key": "macro_accuracy",
                  "better": "higher"},
}

#: measures of a member's peers together (``summary.json``'s ``diversity``, evaluation/diversity.py), in nats
MEMBER_MEASURES = {
    "diversity_js": {"title": "peers' diversity: mean pairwise JS (nats)", "key": "js", "better": None},
    "ensemble_gain": {"title": "ensemble gain over its best peer (nats)", "key": "ensemble_gain", "better": "higher"},
}
