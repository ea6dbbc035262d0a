"""Minimal-pair predictions laid out as the BabyLM 2025 pipeline lays out its own, so that its
``collate_preds.py`` takes them into a submission.

Why a module of its own: the 2025 pipeline collates files, not numbers. Its ``sentence_zero_shot``
run on a data folder ``…/<dataset>`` writes
``<results>/<model>/<revision>/zero_shot/<backend>/blimp/<dataset>/predictions.json``, and
``collate_preds.py`` reads exactly those paths: ``blimp_fast`` and ``supplement_fast`` of every
checkpoint ``chck_1M`` … (``--fast``), ``blimp_filtered`` and ``supplement_filtered`` of the final
model (``--revision_name``, default ``main``). Each file maps a key (the line's ``UID`` when the line has
a ``field``, as BLiMP's lines do, else the file's name) to ``{"predictions": [{"id": "<key>_<n>",
"pred": "<chosen sentence>"}, …]}``, ``n`` counting that key's pairs from 0 in reading order and the
chosen sentence written as it stands in the file. Collation checks each key's count (200 a BLiMP
paradigm and 50 a supplement one in the fast sets, the full set's own sizes otherwise) and scores a
prediction by comparing it, stripped, with ``sentence_good``. The choice is :func:`~.minimal_pairs.chooses_good`'s
(a tie: the good sentence, as the pipeline's ``torch.max`` picks the first).

The BabyLM 2024 format (one file a model, ``blimp``/``blimp_supplement`` sections) is
:func:`~.minimal_pairs.babylm_predictions`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime.atomic import atomic_write_text
from .minimal_pairs import MinimalPair, chooses_good
from .pseudo_likelihood import SCORINGS

__all__ = ["ZERO_SHOT_TASK", "COLLATED_DATASETS", "zero_shot_predictions", "zero_shot_dir",
           "write_zero_shot_predictions"]

#: the task folder the pipeline files BLiMP and its supplement under (its ``--task blimp``)
ZERO_SHOT_TASK = "blimp"
#: the dataset folders ``collate_preds.py`` reads: for each checkpoint (``--fast``) and for the final model
COLLATED_DATASETS = {"fast": ("blimp_fast", "supplement_fast"), "final": ("blimp_filtered", "supplement_filtered")}


def zero_shot_predictions(pairs: Sequence[MinimalPair], good, bad, dataset: str | None = None) -> dict[str, dict]:
    """``{dataset: {key: {"predictions": [{"id": "<key>_<n>", "pred": <chosen sentence>}, …]}}}``: the
    content of each dataset's ``predictions.json``. The dataset is the name of the folder each pair's
    file lies in (the pipeline's ``--data_path``), or ``dataset`` for every pair when given."""
    good, bad = np.asarray(good, dtype=np.float64), np.asarray(bad, dtype=np.float64)
    if not len(pairs) == len(good) == len(bad):
        raise ValueError(f"{len(pairs)} pairs but {len(good)} good and {len(bad)} bad scores")
    out: dict[str, dict] = {}
    for pair, good_chosen in zip(pairs, chooses_good(good, bad)):
        name = dataset or pair.folder
        if not name:
            raise ValueError(f"pair {pair.file}:{pair.line} has no folder (read pairs with read_minimal_pairs, "
                             "or name the dataset)")
        key = pair.submission_uid or pair.file
        listed = out.setdefault(name, {}).setdefault(key, {"predictions": []})["predictions"]
        listed.append({"id": f"{key}_{len(listed)}", "pred": pair.good if good_chosen else pair.bad})
    return out


def _component(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"{what} must be one folder name (no '/', not empty), got {value!r}")
    return value


def _task_dir(results_root: str | Path, model_name: str, revision: str, backend: str) -> Path:
    if backend not in SCORINGS:
        raise ValueError(f"backend must be one of {', '.join(SCORINGS)}, got {backend!r}")
    return (Path(results_root).expanduser() / _component("model name", model_name) / _component("revision", revision)
            / "zero_shot" / backend / ZERO_SHOT_TASK)


def zero_shot_dir(results_root: str | Path, model_name: str, revision: str, backend: str, dataset: str) -> Path:
    """``<results_root>/<model_name>/<revision>/zero_shot/<backend>/blimp/<dataset>``, the pipeline's own
    folder for a BLiMP-format data folder named ``dataset``."""
    return _task_dir(results_root, model_name, revision, backend) / _component("dataset", dataset)


def write_zero_shot_predictions(results_root: str | Path, model_name: str, revision: str, backend: str,
                                pairs: Sequence[MinimalPair], good, bad, dataset: str | None = None) -> list[Path]:
    """Write one ``predictions.json`` per dataset folder of ``pairs`` (:func:`zero_shot_predictions`)
    where the 2025 pipeline puts its own (:func:`zero_shot_dir`), atomically; returns the files written.

    ``revision``: ``main`` for the final model, ``chck_1M``, ``chck_2M``, … for the word-count
    checkpoints; ``backend``: how the sentences were scored (``causal``, ``mlm``, ``mntp``), which is
    also the ``--backend`` to give ``collate_preds.py``. ``good``/``bad``: the pairs' scores, in order."""
    task_dir = _task_dir(results_root, model_name, revision, backend)   # checked before any file is written
    written = []
    for name, content in zero_shot_predictions(pairs, good, bad, dataset).items():
        path = task_dir / _component("dataset", name) / "predictions.json"
        atomic_write_text(path, json.dumps(content) + "\n")
        written.append(path)
    return written
