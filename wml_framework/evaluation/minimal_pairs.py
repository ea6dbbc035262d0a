"""Minimal pairs (BLiMP format): reading the files, sentence log-probabilities, accuracy.

A causal LM's sentence score is the sum of its token log-probabilities with BOS prepended, so the
first word is scored too (method.md §9); sentences are batched by length with right padding and an
attention mask, under ``no_grad`` and in eval mode, and summed in float64. A masked LM's score is
its pseudo-log-likelihood (``mlm``), a hybrid's its masked next-token score (``mntp``), as the BabyLM
2025 pipeline computes them (:mod:`.pseudo_likelihood`); :func:`~.pseudo_likelihood.scoring_kind`
says which a model gets (``scoring`` arguments below: None decides from the model). A pair passes when
log P(good) ≥ log P(bad): the model chooses the sentence with the higher log-probability, and a tie
chooses the first of the pair, the good one (:func:`chooses_good`), as the BabyLM pipeline does; the
accuracy and the predictions file follow this one rule. Accuracy is reported per file, per ``UID``
when the lines carry one, and as the macro average over paradigms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..api import CAUSAL
from ..runtime.distributed import current
from ..runtime.progress import progress_bar
from ..text.tokenizer import encode_with_bos, pad_token_id
from .models import (
    evaluating,
    logits_attending,
    max_positions,
    model_device,
    resolve_device,
)
from .pseudo_likelihood import SCORINGS, pseudo_logprobs, scoring_kind

__all__ = ["sequence_logprobs", "sentence_logprobs", "MinimalPair", "MinimalPairSet", "minimal_pair_files",
           "read_minimal_pairs", "pair_logprobs", "summarize_pairs", "score_minimal_pairs",
           "BLIMP_SUPPLEMENT", "babylm_predictions", "chooses_good", "SCORINGS", "scoring_kind"]


def sequence_logprobs(model: nn.Module, sequences: Sequence[Sequence[int]], *, batch_size: int = 64,
                      device: str | torch.device | None = None, pad_id: int = 0,
                      progress: bool | None = False, desc: str = "scoring") -> np.ndarray:
    """Σ_t log P(x_t | x_<t) for t ≥ 1 of each token sequence (the first token is context only).

    Sequences are sorted by length (longest first, so a batch that does not fit fails at
    once), right-padded, masked, and the sums returned in the caller's order as float64. The
    model attends causally (a model that attends both ways by itself is given a causal mask)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    out = np.zeros(len(sequences), dtype=np.float64)
    if not sequences:
        return out
    lengths = np.array([len(s) for s in sequences])
    if lengths.min() < 1:
        raise ValueError("cannot score an empty token sequence (it needs at least the BOS token)")
    limit = max_positions(model)
    if limit is not None and lengths.max() > limit:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens exceeds the model's {limit} positions")
    dev = model_device(model) if device is None else resolve_device(device)
    order = np.argsort(-lengths, kind="stable")
    with evaluating(model), progress_bar(len(sequences), desc, progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = int(lengths[idx].max())
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, k in enumerate(idx):
                ids[row, :lengths[k]] = torch.as_tensor(sequences[k], dtype=torch.long)
                mask[row, :lengths[k]] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            logits = logits_attending(model, ids, mask, CAUSAL)[:, :-1]
            targets = ids[:, 1:]
            token_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            sums = (token_lp.double() * mask[:, 1:].double()).sum(dim=1)
            out[idx] = sums.cpu().numpy()
            bar.update(len(idx))
    return out


def sentence_logprobs(model: nn.Module, tokenizer, sentences: Sequence[str], *, batch_size: int = 64,
                      device: str | torch.device | None = None, progress: bool | None = False,
                      desc: str = "scoring", scoring: str | None = None) -> np.ndarray:
    """The score of each whole sentence, float64: for ``causal`` scoring log P(sentence) with BOS
    prepended (method.md §9); for ``mlm`` / ``mntp`` its pseudo-log-likelihood / masked next-token
    score (:func:`~.pseudo_likelihood.pseudo_logprobs`, ``batch_size`` masked copies a forward).
    ``scoring`` None: :func:`~.pseudo_likelihood.scoring_kind` of the model."""
    kind = scoring_kind(model, scoring)
    if kind != "causal":
        return pseudo_logprobs(model, tokenizer, sentences, kind=kind, batch_size=batch_size, device=device,
                               progress=progress, desc=desc)
    ids = encode_with_bos(tokenizer, list(sentences))
    return sequence_logprobs(model, ids, batch_size=batch_size, device=device, pad_id=pad_token_id(tokenizer),
                             progress=progress, desc=desc)


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str
    file: str  # paradigm name from the file (stem)
    line: int
    uid: str | None = None
    index: int = 0  # position among the file's examples (its non-blank lines), as the BabyLM pipeline counts them
    folder: str = ""  # the folder the file lies in: the 2025 pipeline files predictions under its name
    submission_uid: str = ""  # the 2025 pipeline's key: the line's UID when it has a "field" (BLiMP's lines), else the file name


@dataclass
class MinimalPairSet:
    pairs: list[MinimalPair]
    files: list[Path]
    malformed: list[dict] = field(default_factory=list)


def minimal_pair_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """The ``.jsonl`` files of a folder (sorted, recursive), a single file, or a list of files."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
            if not files:
                raise ValueError(f"minimal-pair folder {str(path)!r} holds no .jsonl files")
            return files
        if path.is_file():
            return [path]
        raise ValueError(f"minimal-pair source {str(path)!r} is neither a .jsonl file nor a folder of them")
    files = [Path(p).expanduser() for p in source]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"minimal-pair files not found: {', '.join(missing)}")
    return files


def _parse_pair(text: str, file: Path, line: int, index: int = 0) -> MinimalPair:
    """One line to a pair; ValueError with the reason when it is not one."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("sentence_good", "sentence_bad"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise ValueError(f"field {key!r} must be a non-empty string, got {obj[key]!r}")
    uid = obj.get("UID")
    uid = str(uid) if uid not in (None, "") else None
    key = uid if "field" in obj and uid is not None else file.stem
    return MinimalPair(obj["sentence_good"], obj["sentence_bad"], file.stem, line, uid, index,
                       Path(file).absolute().parent.stem, key)


def read_minimal_pairs(source: str | Path | Iterable[str | Path], limit: int | None = None) -> MinimalPairSet:
    """Pairs from BLiMP-style ``.jsonl`` files (``sentence_good``, ``sentence_bad``, optional
    ``UID``); at most ``limit`` per file. A malformed line is recorded with its file, line
    number and reason, and the rest of the file is still read."""
    files = minimal_pair_files(source)
    pairs: list[MinimalPair] = []
    malformed: list[dict] = []
    for file in files:
        taken, index = 0, -1
        with file.open(encoding="utf-8", errors="replace") as fh:
            for number, text in enumerate(fh, start=1):
                if limit is not None and taken >= limit:
                    break
                if not text.strip():
                    continue
                index += 1
                try:
                    pairs.append(_parse_pair(text, file, number, index))
                    taken += 1
                except ValueError as exc:
                    malformed.append({"file": str(file), "line": number, "reason": str(exc)})
    return MinimalPairSet(pairs, files, malformed)


def pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[MinimalPair], **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The scores of good and bad of each pair (both sides batched together; ``kwargs`` go to
    :func:`sentence_logprobs`, ``scoring`` included). In a data-parallel run each process scores
    every n-th pair and all of them get every score, in order."""

    dist = current()
    mine = list(pairs)[dist.rank::dist.world]
    sentences = [p.good for p in mine] + [p.bad for p in mine]
    scores = sentence_logprobs(model, tokenizer, sentences, **kwargs) if sentences else np.zeros(0)
    if not dist.active:
        return scores[:len(mine)], scores[len(mine):]
    good, bad = np.zeros(len(pairs)), np.zeros(len(pairs))
    for rank, part in enumerate(dist.gather(np.asarray(scores, dtype=np.float64))):
        n = len(part) // 2
        good[rank::dist.world], bad[rank::dist.world] = part[:n], part[n:]
    return good, bad


def chooses_good(good, bad) -> np.ndarray:
    """Whether the model chooses the good sentence of each pair: log P(good) ≥ log P(bad). A tie
    goes to the good sentence, the first of the pair, as in the BabyLM pipeline: it lists a pair as
    ``[sentence_good, sentence_bad]`` with label 0 and takes ``torch.max(…, dim=1)``, whose index is
    the first of equal values (so a tie there counts as correct too). Both the accuracy
    (:func:`summarize_pairs`) and the predictions (:func:`babylm_predictions`) use this rule."""
    return np.asarray(good, dtype=np.float64) >= np.asarray(bad, dtype=np.float64)


def _accuracy_table(keys: Sequence[str], correct: np.ndarray) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for key in sorted(set(keys)):
        hits = [c for k, c in zip(keys, correct) if k == key]
        table[key] = {"pairs": len(hits), "correct": int(sum(hits)), "accuracy": float(np.mean(hits))}
    return table


def summarize_pairs(pairs: Sequence[MinimalPair], good: np.ndarray, bad: np.ndarray,
                    malformed: Sequence[dict] = ()) -> dict:
    """Accuracy per file, per UID (when every pair has one) and macro/micro averages.

    The macro average is over paradigms: UIDs when every pair carries one (method.md §9),
    files otherwise; ``paradigm_key`` says which."""
    correct = chooses_good(good, bad)
    by_file = _accuracy_table([p.file for p in pairs], correct)
    with_uid = bool(pairs) and all(p.uid is not None for p in pairs)
    by_uid = _accuracy_table([p.uid for p in pairs], correct) if with_uid else {}
    paradigms = by_uid if with_uid else by_file
    return {
        "pairs": len(pairs),
        "correct": int(correct.sum()),
        "files": by_file,
        "uids": by_uid,
        "paradigm_key": "UID" if with_uid else "file",
        "macro_accuracy": float(np.mean([v["accuracy"] for v in paradigms.values()])) if paradigms else None,
        "micro_accuracy": float(correct.mean()) if len(pairs) else None,
        "malformed": list(malformed),
    }


def score_minimal_pairs(model: nn.Module, tokenizer, source: str | Path | Iterable[str | Path] | MinimalPairSet,
                        limit: int | None = None, *, batch_size: int = 64, device: str | torch.device | None = None,
                        progress: bool | None = False, desc: str = "minimal pairs",
                        return_logprobs: bool = False, scoring: str | None = None) -> dict:
    """Minimal-pair accuracy of a model or ensemble on a folder/file(s) of BLiMP-style pairs.

    Returns :func:`summarize_pairs`'s dict plus ``source`` and ``scoring`` (how the sentences were
    scored: ``scoring``, or when None the model's own, :func:`~.pseudo_likelihood.scoring_kind`);
    with ``return_logprobs`` also the per-pair ``logprob_good`` / ``logprob_bad`` lists (in reading order)."""
    data = source if isinstance(source, MinimalPairSet) else read_minimal_pairs(source, limit)
    kind = scoring_kind(model, scoring)
    good, bad = pair_logprobs(model, tokenizer, data.pairs, batch_size=batch_size, device=device,
                              progress=progress, desc=desc, scoring=kind)
    result = summarize_pairs(data.pairs, good, bad, data.malformed)
    result["source"] = [str(f) for f in data.files]
    result["scoring"] = kind
    if return_logprobs:
        result["logprob_good"] = good.tolist()
        result["logprob_bad"] = bad.tolist()
    return result


#: the BLiMP supplement's paradigms: their predictions go in the submission's ``blimp_supplement`` section
BLIMP_SUPPLEMENT = ("hypernym", "qa_congruence_easy", "qa_congruence_tricky", "subject_aux_inversion", "turn_taking")


def babylm_predictions(pairs: Sequence[MinimalPair], good: np.ndarray, bad: np.ndarray) -> dict:
    """The ``blimp`` and ``blimp_supplement`` sections of a BabyLM 2024 submission's predictions JSON
    (what the pipeline's ``collect_results.py`` writes): per paradigm file, one ``{"id": "<file>_<index>",
    "pred": " <chosen sentence>"}`` per example, the sentence :func:`chooses_good` picks (the higher
    log-probability; a tie picks the first choice, the good sentence, as the pipeline does) and the
    leading space of the pipeline's continuation."""
    out: dict[str, dict] = {"blimp": {}, "blimp_supplement": {}}
    picks = chooses_good(good, bad)
    for pair, good_chosen in sorted(zip(pairs, picks), key=lambda t: (t[0].file, t[0].index)):
        section = "blimp_supplement" if pair.file in BLIMP_SUPPLEMENT else "blimp"
        chosen = pair.good if good_chosen else pair.bad
        out[section].setdefault(pair.file, {"predictions": []})["predictions"].append(
            {"id": f"{pair.file}_{pair.index}", "pred": " " + chosen})
    return out
