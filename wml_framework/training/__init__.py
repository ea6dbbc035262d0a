"""Training: the one loop every model is trained by (:mod:`.loop`, peers and teacher alike, with
its state in :mod:`.loop_state`, its per-loop settings in :mod:`.loop_settings`, its records in
:mod:`.records` and its forward switches in :mod:`.forward`), the teacher (:mod:`.teacher`), building peers (:mod:`.peers`), model families (:mod:`.families`),
learning-rate schedules (:mod:`.schedules`), callbacks (:mod:`.callbacks`), AdamW's
preconditioner for the Adam-aware hypergradient (:mod:`.adam_precond`), the attention switch
for double backward (:mod:`.attention`), the run's progress display (:mod:`.progress`), the checks
of ``report_to``'s destinations (:mod:`.report_to`), and the export of trained peers (:mod:`.export`).

May import: :mod:`wml_framework.evaluation`, :mod:`wml_framework.text`, :mod:`wml_framework.config`,
:mod:`wml_framework.plugin_system`, :mod:`wml_framework.api`, :mod:`wml_framework.runtime`.
Not the recipes (``runner``, ``compare``) or the command line, which are built on it.
"""

__all__ = []
