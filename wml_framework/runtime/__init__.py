"""Process and run-folder plumbing: what any long job needs, whatever it trains.

Atomic writes (:mod:`.atomic`), checksummed checkpoints (:mod:`.checkpoint`), the run folder's
names (:mod:`.run_layout`) and lock (:mod:`.run_lock`), signals that finish a step before stopping
(:mod:`.interrupts`), data-parallel ranks (:mod:`.distributed`), the thread choice
(:mod:`.threads`), peers on devices (:mod:`.placement`) and progress bars (:mod:`.progress`).

May import: the standard library, torch, tqdm. Nothing else of ``wml_framework``: this is the
bottom floor, and every other part of the core may build on it.
"""

__all__ = []
