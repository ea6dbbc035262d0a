"""Text to tokens: the corpus (files, BabyLM layout, documents, cleaning; :mod:`.corpus`), the
tokenizer (:mod:`.tokenizer`) and the cached token streams with their held-out split
(:mod:`.tokens`).

May import: :mod:`wml_framework.runtime` (atomic writes), tokenizers, transformers, numpy, torch.
Knows nothing of models, plugins or training.
"""

__all__ = []
