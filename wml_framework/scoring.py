"""Scoring language models: sentence log-probabilities, minimal pairs, perplexity, ensembles.

One code path scores a single Hugging Face causal LM and the ω-weighted logit ensemble of a
run's peers (:class:`EnsembleLM` looks like a model), so the trainer, ``wml eval`` and the
evaluator plugins all report numbers computed the same way (method.md §4 and §9):

* a sentence's score is the sum of its token log-probabilities with BOS prepended, so the
  first word is scored too; sentences are batched by length with right padding and an
  attention mask, under ``no_grad`` and in eval mode, and summed in float64;
* a minimal pair passes when log P(good) > log P(bad) (a tie fails); accuracy is reported
  per file, per ``UID`` when the lines carry one, and as the macro average over paradigms;
* perplexity is exp of the token-mean cross-entropy over non-overlapping held-out blocks.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .data import encode_with_bos

# --------------------------------------------------------------------------------------
# models and ensembles
# --------------------------------------------------------------------------------------


class EnsembleLM(nn.Module):
    """The ω-weighted logit ensemble z_ens = Σ_i ω_i z_i of models sharing one vocabulary.

    ``forward(input_ids, attention_mask)`` returns the mixed logits (a tensor), so an
    ensemble is scored exactly like one model; log_softmax of them is the ensemble's
    distribution (method.md §4)."""

    def __init__(self, models: Sequence[nn.Module], omega: Sequence[float] | Tensor | np.ndarray):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        weights = torch.as_tensor(np.asarray(omega, dtype=np.float64)).reshape(-1)
        if len(weights) != len(models):
            raise ValueError(f"ensemble of {len(models)} models was given {len(weights)} weights")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"ensemble weights must be finite, non-negative, with a positive sum; got {weights.tolist()}")
        self.models = nn.ModuleList(models)
        self.register_buffer("omega", weights / weights.sum())

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        mixed = None
        for weight, model in zip(self.omega, self.models):
            z = model_logits(model, input_ids, attention_mask)
            if mixed is not None and z.shape[-1] != mixed.shape[-1]:
                raise ValueError(f"ensemble members disagree on the vocabulary: {mixed.shape[-1]} vs {z.shape[-1]} logits")
            term = weight.to(z.dtype) * z
            mixed = term if mixed is None else mixed + term
        return mixed

    def num_parameters(self) -> int:
        return sum(count_parameters(m) for m in self.models)


def model_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Logits ``(batch, time, vocab)`` of a Hugging Face causal LM or an :class:`EnsembleLM`."""
    if hasattr(model, "config") and hasattr(model, "generate"):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out if isinstance(out, Tensor) else out.logits


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    if isinstance(model, EnsembleLM):
        return model.num_parameters()
    return sum(p.numel() for p in model.parameters())


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model accepts (smallest over an ensemble), if it says."""
    if isinstance(model, EnsembleLM):
        limits = [max_positions(m) for m in model.models]
        limits = [x for x in limits if x]
        return min(limits) if limits else None
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradient for the duration; the caller's training mode is restored
    (the trainer scores its peers mid-run)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) means CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _progress(total: int, desc: str, enabled: bool | None):
    """tqdm to stderr; quiet unless enabled, or (None) unless stderr is a terminal."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, leave=False, unit="seq")


# --------------------------------------------------------------------------------------
# sentence log-probabilities
# --------------------------------------------------------------------------------------


def sequence_logprobs(model: nn.Module, sequences: Sequence[Sequence[int]], *, batch_size: int = 64,
                      device: str | torch.device | None = None, pad_id: int = 0,
                      progress: bool | None = False, desc: str = "scoring") -> np.ndarray:
    """Σ_t log P(x_t | x_<t) for t ≥ 1 of each token sequence (the first token is context only).

    Sequences are sorted by length (longest first, so a batch that does not fit fails at
    once), right-padded, masked, and the sums returned in the caller's order as float64."""
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
    with evaluating(model), _progress(len(sequences), desc, progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = int(lengths[idx].max())
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, k in enumerate(idx):
                ids[row, :lengths[k]] = torch.as_tensor(sequences[k], dtype=torch.long)
                mask[row, :lengths[k]] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            logits = model_logits(model, ids, mask)[:, :-1]
            targets = ids[:, 1:]
            token_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            sums = (token_lp.double() * mask[:, 1:].double()).sum(dim=1)
            out[idx] = sums.cpu().numpy()
            bar.update(len(idx))
    return out


def sentence_logprobs(model: nn.Module, tokenizer, sentences: Sequence[str], *, batch_size: int = 64,
                      device: str | torch.device | None = None, progress: bool | None = False,
                      desc: str = "scoring") -> np.ndarray:
    """log P(sentence) of each whole sentence with BOS prepended (method.md §9), float64."""
    ids = encode_with_bos(tokenizer, list(sentences))
    return sequence_logprobs(model, ids, batch_size=batch_size, device=device, pad_id=pad_token_id(tokenizer),
                             progress=progress, desc=desc)


def bos_token_id(tokenizer) -> int | None:
    """The token scoring prepends: ``bos_token``, else ``eos_token`` (GPT-2 style)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether plain ``tokenizer(text)`` already starts with BOS, which the BabyLM pipeline's
    causal backend relies on to score a sentence's first word."""
    bos = bos_token_id(tokenizer)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def with_bos(tokenizer):
    """A copy of a fast tokenizer whose encodings start with BOS (its ``bos_token``, else its
    ``eos_token``), so that a folder saved with it scores in the BabyLM pipeline as in ``wml eval``.
    Returns the tokenizer itself when it already adds BOS."""
    import copy

    from tokenizers import processors

    if tokenizer_adds_bos(tokenizer):
        return tokenizer
    token = tokenizer.bos_token or tokenizer.eos_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if token is None or backend is None:
        raise ValueError("cannot make this tokenizer add BOS: it needs a fast backend and a bos or eos token")
    out = copy.deepcopy(tokenizer)
    template = processors.TemplateProcessing(single=f"{token} $A", pair=f"{token} $A {token} $B",
                                             special_tokens=[(token, tokenizer.convert_tokens_to_ids(token))])
    existing = out.backend_tokenizer.post_processor
    out.backend_tokenizer.post_processor = template if existing is None else processors.Sequence([existing, template])
    if out.bos_token is None:
        out.bos_token = token
    return out


def pad_token_id(tokenizer) -> int:
    """Any id works for padding (masked, never a target); prefer the tokenizer's own."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


# --------------------------------------------------------------------------------------
# minimal pairs (BLiMP format)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str
    file: str  # paradigm name from the file (stem)
    line: int
    uid: str | None = None


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


def _parse_pair(text: str, file: Path, line: int) -> MinimalPair:
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
    return MinimalPair(obj["sentence_good"], obj["sentence_bad"], file.stem, line,
                       str(uid) if uid not in (None, "") else None)


def read_minimal_pairs(source: str | Path | Iterable[str | Path], limit: int | None = None) -> MinimalPairSet:
    """Pairs from BLiMP-style ``.jsonl`` files (``sentence_good``, ``sentence_bad``, optional
    ``UID``); at most ``limit`` per file. A malformed line is recorded with its file, line
    number and reason, and the rest of the file is still read."""
    files = minimal_pair_files(source)
    pairs: list[MinimalPair] = []
    malformed: list[dict] = []
    for file in files:
        taken = 0
        with file.open(encoding="utf-8", errors="replace") as fh:
            for number, text in enumerate(fh, start=1):
                if limit is not None and taken >= limit:
                    break
                if not text.strip():
                    continue
                try:
                    pairs.append(_parse_pair(text, file, number))
                    taken += 1
                except ValueError as exc:
                    malformed.append({"file": str(file), "line": number, "reason": str(exc)})
    return MinimalPairSet(pairs, files, malformed)


def pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[MinimalPair], **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """log P(good) and log P(bad) of each pair (both sides batched together)."""
    sentences = [p.good for p in pairs] + [p.bad for p in pairs]
    scores = sentence_logprobs(model, tokenizer, sentences, **kwargs)
    return scores[:len(pairs)], scores[len(pairs):]


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
    correct = np.asarray(good) > np.asarray(bad)
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
                        return_logprobs: bool = False) -> dict:
    """Minimal-pair accuracy of a model or ensemble on a folder/file(s) of BLiMP-style pairs.

    Returns :func:`summarize_pairs`'s dict plus ``source``; with ``return_logprobs`` also
    the per-pair ``logprob_good`` / ``logprob_bad`` lists (in reading order)."""
    data = source if isinstance(source, MinimalPairSet) else read_minimal_pairs(source, limit)
    good, bad = pair_logprobs(model, tokenizer, data.pairs, batch_size=batch_size, device=device,
                              progress=progress, desc=desc)
    result = summarize_pairs(data.pairs, good, bad, data.malformed)
    result["source"] = [str(f) for f in data.files]
    if return_logprobs:
        result["logprob_good"] = good.tolist()
        result["logprob_bad"] = bad.tolist()
    return result


# --------------------------------------------------------------------------------------
# perplexity
# --------------------------------------------------------------------------------------


def perplexity(model: nn.Module, tokens: Sequence[int] | np.ndarray, block_size: int, batch_size: int = 8,
               max_blocks: int | None = None, *, device: str | torch.device | None = None,
               progress: bool | None = False, desc: str = "perplexity") -> dict:
    """Token-mean cross-entropy over non-overlapping held-out blocks, and ppl = exp(loss).

    Block k predicts tokens[k·B+1 … k·B+B] from tokens[k·B … k·B+B−1]; the tail shorter than
    a block is left out. ``max_blocks`` keeps that many blocks spread evenly over the
    stream (held-out data interleaves several books), deterministically."""
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be ≥ 1, got {block_size} and {batch_size}")
    limit = max_positions(model)
    if limit is not None and block_size > limit:
        raise ValueError(f"block_size {block_size} exceeds the model's {limit} positions")
    stream = np.asarray(tokens)
    n_blocks = (len(stream) - 1) // block_size
    if n_blocks < 1:
        raise ValueError(f"{len(stream)} held-out tokens are fewer than block_size+1 = {block_size + 1}")
    starts = np.arange(n_blocks) * block_size
    if max_blocks is not None and max_blocks < n_blocks:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be ≥ 1, got {max_blocks}")
        starts = starts[np.unique(np.linspace(0, n_blocks - 1, max_blocks).round().astype(int))]
    dev = model_device(model) if device is None else resolve_device(device)
    total_nll, total_tokens = 0.0, 0
    with evaluating(model), _progress(len(starts), desc, progress) as bar:
        for b in range(0, len(starts), batch_size):
            rows = np.stack([np.asarray(stream[s:s + block_size + 1], dtype=np.int64) for s in starts[b:b + batch_size]])
            block = torch.from_numpy(rows).to(dev)
            logits = model_logits(model, block[:, :-1], torch.ones_like(block[:, :-1]))
            targets = block[:, 1:]
            nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total_nll += float(nll.double().sum())
            total_tokens += targets.numel()
            bar.update(len(rows))
    loss = total_nll / total_tokens
    return {"loss": loss, "ppl": math.exp(loss) if loss < 700 else float("inf"), "tokens": total_tokens,
            "blocks": int(len(starts)), "block_size": block_size}


# --------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run folder's models. ``omega_source`` says where ω came from."""

    run_dir: Path
    peer_names: list[str]
    peers: list[nn.Module]
    peer_dirs: list[Path]
    omega: np.ndarray
    omega_source: str
    tokenizer: Any
    teacher: nn.Module | None = None
    teacher_dir: Path | None = None
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def ensemble(self) -> EnsembleLM:
        return EnsembleLM(self.peers, self.omega)


def is_model_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "peers").is_dir()


def peer_dirs(run_dir: Path) -> list[Path]:
    """``peers/peer_<i>`` folders in index order (peer_10 after peer_9)."""
    found = [p for p in (Path(run_dir) / "peers").iterdir() if p.is_dir() and is_model_dir(p)]

    def index(p: Path) -> tuple[int, str]:
        tail = p.name.rsplit("_", 1)[-1]
        return (int(tail) if tail.isdigit() else 1 << 30, p.name)

    return sorted(found, key=index)


def read_jsonl(path: Path, on_error: Callable[[int, str], None] | None = None) -> list[dict]:
    """Records of a JSON-lines file; a broken line (say, from a killed run) is skipped."""
    records = []
    if not Path(path).is_file():
        return records
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                if on_error:
                    on_error(number, exc.msg)
                continue
            if isinstance(obj, dict):
                records.append(obj)
    return records


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        warnings.warn(f"{path}: not valid JSON ({exc.msg}); ignored", stacklevel=2)
        return {}
    return obj if isinstance(obj, dict) else {}


def run_omega(run_dir: Path, num_peers: int) -> tuple[np.ndarray, str]:
    """ω of a run: summary.json, else the last ``outer`` then ``train`` record of
    metrics.jsonl, else uniform; normalised to sum 1, with where it came from."""
    run_dir = Path(run_dir)
    candidates: list[tuple[Any, str]] = [(read_json(run_dir / "summary.json").get("omega"), "summary.json")]
    records = read_jsonl(run_dir / "metrics.jsonl")
    for kind in ("outer", "train"):
        last = [r for r in records if r.get("kind") == kind and r.get("omega") is not None]
        if last:
            candidates.append((last[-1]["omega"], f"metrics.jsonl (last {kind!r} record, step {last[-1].get('step')})"))
    for value, source in candidates:
        if value is None:
            continue
        try:
            w = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if len(w) == num_peers and np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0:
            return w / w.sum(), source
        warnings.warn(f"{run_dir}: ω from {source} ({value!r}) does not fit {num_peers} peers; ignored", stacklevel=2)
    return np.full(num_peers, 1.0 / num_peers), "uniform (no ω recorded)"


def load_model(path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = torch.float32):
    """A Hugging Face causal LM in eval mode (float32 by default: CPU scoring of bf16 weights is slow and coarse)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(resolve_device(device)).eval()


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_run(run_dir: str | Path, device: str | torch.device | None = "cpu", *, load_teacher: bool = True,
             dtype: torch.dtype | None = torch.float32) -> LoadedRun:
    """Peers (``peers/peer_*``), ω, teacher (``teacher/``, when present) and the shared tokenizer of a run."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ValueError(f"{str(run_dir)!r} is not a run folder (it has no peers/ folder)")
    dirs = peer_dirs(run_dir)
    if not dirs:
        raise ValueError(f"{str(run_dir / 'peers')!r} holds no Hugging Face model folders")
    peers = [load_model(d, device, dtype) for d in dirs]
    omega, source = run_omega(run_dir, len(dirs))
    teacher_dir = run_dir / "teacher"
    teacher = load_model(teacher_dir, device, dtype) if load_teacher and is_model_dir(teacher_dir) else None
    config: dict = {}
    if (run_dir / "config.toml").is_file():
        try:
            config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            warnings.warn(f"{run_dir / 'config.toml'}: not valid TOML ({exc}); ignored", stacklevel=2)
    return LoadedRun(run_dir=run_dir, peer_names=[d.name for d in dirs], peers=peers, peer_dirs=dirs, omega=omega,
                     omega_source=source, tokenizer=load_tokenizer(dirs[0]),
                     teacher=teacher, teacher_dir=teacher_dir if teacher is not None else None,
                     summary=read_json(run_dir / "summary.json"), config=config)
