"""Scoring models: held-out loss and perplexity (:mod:`.heldout`), minimal pairs
(:mod:`.minimal_pairs`), loading models and ensembles (:mod:`.models`), reading run folders
(:mod:`.run_reader`), BabyLM 2025 submission files (:mod:`.submission`), and the ``wml eval``
entry point that runs every evaluator plugin (:mod:`.scoring`, re-exported here).

May import: :mod:`wml_framework.config`, :mod:`wml_framework.plugin_system`, :mod:`wml_framework.text`,
:mod:`wml_framework.api`, :mod:`wml_framework.runtime`. Not training: a trained model is all it needs.
"""

from .scoring import (
                      DISPLAY,
                      EvaluationError,
                      choose_threads,
                      default_json_path,
                      evaluate,
                      headline,
                      make_evaluators,
                      merge_eval_results,
                      write_eval_json,
)

__all__ = ["DISPLAY", "EvaluationError", "choose_threads", "default_json_path", "evaluate", "headline",
           "make_evaluators", "merge_eval_results", "write_eval_json"]
