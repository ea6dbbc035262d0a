"""Built-in evaluators: held-out ``perplexity`` and ``minimal_pairs`` accuracy (BLiMP format).

Each factory takes a :class:`~wml_framework.config.WMLConfig` and its declared options and
returns a callable ``evaluator(model, tokenizer, *, device=None, progress=None, desc=None) ->
dict`` (or None when the configuration gives it nothing to score). The scoring itself lives in
:mod:`wml_framework.evaluation.heldout` and :mod:`wml_framework.evaluation.minimal_pairs`, so every caller computes
the numbers the same way. Torch-heavy modules are imported where they are used, so that listing
plugins stays fast.
"""

from wml_framework import hookimpl
from wml_framework.api import Option

from .minimal_pairs import BABYLM_FORMATS, make_minimal_pairs
from .perplexity import make_perplexity

__all__ = ["wml_register_evaluators"]


@hookimpl
def wml_register_evaluators(register):
    register("perplexity", make_perplexity,
             help="Held-out perplexity on the evaluated half of the corpus's held-out split (non-overlapping blocks).",
             options=[Option("batch_size", 8, "Blocks per forward pass.", low=1, high=65536),
                      Option("max_blocks", 0, "Blocks scored, spread evenly over the stream (0: all).", low=0)])
    register("minimal_pairs", make_minimal_pairs,
             help="Minimal-pair accuracy (BLiMP-format .jsonl: per file/UID and macro average); causal LMs by "
                  "next-token log-probabilities (BOS prepended), masked LMs by pseudo-log-likelihood, hybrid ones by MNTP.",
             options=[Option("batch_size", 64, "Sentences per forward pass (masked copies for mlm and mntp).",
                             low=1, high=65536),
                      Option("scoring", "auto", "How sentences are scored: 'auto' (as the model's config says, else "
                                                "mlm for a masked LM, causal otherwise), causal, mlm "
                                                "(pseudo-log-likelihood) or mntp (masked next-token).",
                             choices=["auto", "causal", "mlm", "mntp"]),
                      Option("predictions_dir", "", "Also write each model's choices as BabyLM submission files "
                                                    "under DIR ('': do not); see babylm_format."),
                      Option("babylm_format", 2025, "Format of the predictions: 2025, the 2025 pipeline's results "
                                                    "layout DIR/<model>/<revision>/zero_shot/<scoring>/blimp/<data "
                                                    "folder>/predictions.json (what its collate_preds.py reads); "
                                                    "2024, one DIR/<model>.json with blimp/blimp_supplement sections.",
                             choices=list(BABYLM_FORMATS)),
                      Option("revision", "main", "The revision folder of the 2025 layout: main for the final model, "
                                                 "chck_1M, chck_2M, ... for the word-count checkpoints.")])
