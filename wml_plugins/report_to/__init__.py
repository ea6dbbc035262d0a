"""Built-in run observers for the config key ``report_to``: TensorBoard (:mod:`.tensorboard_log`) and
Weights & Biases (:mod:`.wandb_log`), where Hugging Face users look at their runs.

Each is its own plugin (entry points ``tensorboard`` and ``wandb``), so that one that fails is
silenced alone and the other goes on. Both write inside the run folder, log every number of the
records (:mod:`.scalars`) at the record's step, and append when the run resumes (:mod:`.observer`).
Their packages are optional extras, imported only by a run that names them.
"""

__all__ = []
