"""The ``minimal_pairs`` evaluator: accuracy on BLiMP-format ``.jsonl`` files (per file, per UID,
macro average). A causal LM's sentences are scored with BOS prepended so the first word is scored
too (method.md §9); a masked LM's by pseudo-log-likelihood, a hybrid's by masked next-token
prediction, as the BabyLM 2025 pipeline scores them (``scoring``: 'auto' decides from each model,
``wml_framework.evaluation.minimal_pairs.scoring_kind``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BABYLM_FORMATS", "blimp_source", "MinimalPairsEvaluator", "make_minimal_pairs"]

#: the BabyLM submission formats the predictions can be written in (the first is the default)
BABYLM_FORMATS = (2025, 2024)

def blimp_source(spec: str | None) -> Path | None:
    """The folder or file a ``blimp`` setting names: 'default' is the sample shipped in the
    package, '' or 'none' means no minimal-pair evaluation."""
    from wml_framework.text.corpus import default_blimp_dir, is_none

    if is_none(spec):
        return None
    if str(spec) == "default":
        return default_blimp_dir()
    return Path(spec).expanduser()


class MinimalPairsEvaluator:
    """The pairs are read once and scored for every model."""

    def __init__(self, source: str | Path = "default", limit: int | None = None, batch_size: int = 64,
                 predictions_dir: str = "", scoring: str = "auto", babylm_format: int = 2025, revision: str = "main"):
        path = blimp_source(str(source))
        if path is None:
            raise ValueError(f"no minimal-pair source given ({source!r}); use 'default' or a folder of .jsonl files")
        from wml_framework.evaluation.minimal_pairs import SCORINGS, read_minimal_pairs

        if scoring not in ("auto", *SCORINGS):
            raise ValueError(f"minimal-pair scoring must be 'auto' or one of {', '.join(SCORINGS)}, not {scoring!r}")
        if babylm_format not in BABYLM_FORMATS:
            raise ValueError(f"babylm_format must be one of {', '.join(map(str, BABYLM_FORMATS))}, not {babylm_format!r}")
        if not revision or "/" in revision or revision in (".", ".."):
            raise ValueError(f"revision must be one folder name (no '/', not empty), not {revision!r}")
        self.source, self.limit, self.batch_size = path, limit, batch_size
        self.scoring = None if scoring == "auto" else scoring
        self.pairs = read_minimal_pairs(path, limit)
        self.predictions_dir = Path(predictions_dir).expanduser() if predictions_dir else None
        self.babylm_format, self.revision = babylm_format, revision
        self.written: list[str] = []

    def __call__(self, model, tokenizer, *, device=None, progress=None, desc: str | None = None,
                 name: str | None = None) -> dict:
        from wml_framework.evaluation.minimal_pairs import score_minimal_pairs

        result = score_minimal_pairs(model, tokenizer, self.pairs, batch_size=self.batch_size, device=device,
                                     progress=progress, desc=desc or "minimal pairs",
                                     return_logprobs=self.predictions_dir is not None, scoring=self.scoring)
        if self.predictions_dir is not None:
            good, bad = result.pop("logprob_good"), result.pop("logprob_bad")
            from wml_framework.runtime.distributed import current

            if current().is_main:         # one writer in a data-parallel run
                self._write_predictions(name or "model", result["scoring"], good, bad)
        for key in ("malformed", "source"):  # the same for every model: in summary()
            result.pop(key, None)
        result["limit"] = self.limit
        return result

    def _write_predictions(self, name: str, backend: str, good, bad) -> None:
        """This model's choices in the BabyLM submission format: 2025, one ``predictions.json`` per data
        folder in the pipeline's results layout (under the model name as the pipeline derives it from
        a path, its stem); 2024, ``<predictions_dir>/<model>.json``."""
        if self.babylm_format == 2025:
            from wml_framework.evaluation.submission import write_zero_shot_predictions

            paths = write_zero_shot_predictions(self.predictions_dir, Path(name).stem, self.revision, backend,
                                                self.pairs.pairs, good, bad)
            self.written += [str(p) for p in paths]
            return
        import json

        from wml_framework.evaluation.minimal_pairs import babylm_predictions
        from wml_framework.runtime.atomic import atomic_write_text

        path = self.predictions_dir / f"{name}.json"
        atomic_write_text(path, json.dumps(babylm_predictions(self.pairs.pairs, good, bad)) + "\n")
        self.written.append(str(path))

    def summary(self) -> dict:
        out = {"source": [str(f) for f in self.pairs.files], "pairs": len(self.pairs.pairs),
               "malformed": self.pairs.malformed}
        if self.written:
            out["babylm_predictions"] = self.written
        return out

    def warnings(self) -> list[str]:
        return [f"{bad['file']}:{bad['line']}: malformed minimal pair skipped ({bad['reason']})"
                for bad in self.pairs.malformed]

    def columns(self, result: dict) -> dict:
        macro = result.get("macro_accuracy")
        return {"min. pairs (macro)": "—" if macro is None else f"{100 * macro:.1f}%", "pairs": str(result["pairs"])}

    def details(self, results: dict) -> list[str]:
        """Accuracy per paradigm, one column per model."""
        if not results:
            return []
        first = next(iter(results.values()))
        key = "uids" if first.get("paradigm_key") == "UID" else "files"
        names = list(results)
        rows = [[p] + [f"{100 * results[n][key][p]['accuracy']:.1f}" if p in results[n][key] else "—" for n in names]
                for p in first[key]]
        head = ["paradigm", *names]
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        return ["", f"minimal-pair accuracy (%) per paradigm ({first['paradigm_key']}):", fmt(head),
                "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]


def make_minimal_pairs(cfg, *, batch_size: int = 64, predictions_dir: str = "", scoring: str = "auto",
                       babylm_format: int = 2025, revision: str = "main"):
    """Minimal-pair accuracy (BLiMP-format .jsonl: per file/UID and macro average); each model scored
    as ``scoring`` says ('auto': causal with BOS prepended, or PLL / MNTP as the model declares)."""
    if blimp_source(cfg.blimp) is None:
        return None
    return MinimalPairsEvaluator(cfg.blimp, cfg.blimp_limit or None, batch_size, predictions_dir, scoring,
                                 babylm_format, revision)
