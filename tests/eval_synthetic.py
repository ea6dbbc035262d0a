"""Synthetic material for evaluation tests, benchmarks and demos.

Tiny random-weight Hugging Face models, a small trained tokenizer, minimal-pair files and a
complete run folder laid out exactly as the trainer writes it (peers/, teacher/, champion/,
config.toml, summary.json, metrics.jsonl), so that scoring, ``wml eval`` and ``wml report``
can be exercised without training anything and without data outside the package.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from wml_framework.runtime.atomic import atomic_write_json, atomic_write_text
from wml_framework.text.tokenizer import train_tokenizer

_NAMES = ["Alice", "Tom", "the queen", "the rabbit", "a girl", "the wolf", "some boys", "the king", "Gretel", "the cat"]
_VERBS_SG = ["sees", "likes", "finds", "helps", "watches", "calls"]
_VERBS_PL = ["see", "like", "find", "help", "watch", "call"]
_OBJECTS = ["the garden", "a door", "the river", "some bread", "the old house", "a golden key", "the forest"]
_PLURAL = {"some boys"}


def synthetic_sentences(n: int, seed: int = 0) -> list[str]:
    """Short grammatical English-like sentences from a fixed little grammar."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        subject = rng.choice(_NAMES)
        verbs = _VERBS_PL if subject in _PLURAL else _VERBS_SG
        sentence = f"{subject} {rng.choice(verbs)} {rng.choice(_OBJECTS)}."
        out.append(sentence[0].upper() + sentence[1:])
    return out


def synthetic_pairs(n: int, seed: int = 0, uid: str | None = None) -> list[dict]:
    """Agreement minimal pairs (good: ``Alice sees …``, bad: ``Alice see …``) in BLiMP form."""
    rng = random.Random(seed)
    pairs = []
    for k in range(n):
        subject = rng.choice([s for s in _NAMES if s not in _PLURAL])
        j = rng.randrange(len(_VERBS_SG))
        obj = rng.choice(_OBJECTS)
        good = f"{subject} {_VERBS_SG[j]} {obj}."
        bad = f"{subject} {_VERBS_PL[j]} {obj}."
        row = {"sentence_good": good[0].upper() + good[1:], "sentence_bad": bad[0].upper() + bad[1:], "pairID": str(k)}
        if uid is not None:
            row["UID"] = uid
        pairs.append(row)
    return pairs


def write_minimal_pairs(folder: Path, paradigms: dict[str, Sequence[dict]]) -> Path:
    """One ``<name>.jsonl`` per paradigm."""
    folder = Path(folder)
    for name, rows in paradigms.items():
        atomic_write_text(folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def tiny_tokenizer(vocab_size: int = 300, seed: int = 0):
    """A byte-level BPE tokenizer (BOS added to every encoding) trained on synthetic text."""
    return train_tokenizer(synthetic_sentences(400, seed), vocab_size)


def tiny_llama(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int | None = None,
               seed: int = 0, max_positions: int = 256, tokenizer=None):
    """A random-weight LLaMA causal LM (eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, **_special_ids(tokenizer))
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
              max_positions: int = 256, tokenizer=None):
    """A random-weight GPT-2 causal LM (eval mode, dropout off)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_special_ids(tokenizer))
    return GPT2LMHeadModel(cfg).eval()


def _special_ids(tokenizer) -> dict:
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None}
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def save_model(model, tokenizer, path: Path) -> Path:
    """``save_pretrained`` of model (safetensors) and tokenizer into one folder."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _curve(start: float, end: float, steps: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    t = np.arange(1, steps + 1)
    return end + (start - end) * np.exp(-t / max(1.0, steps / 4)) + rng.normal(0, noise, steps)


def synthetic_metrics(num_peers: int, steps: int, seed: int = 0, outer_every: int = 5, eval_every: int = 10,
                      with_teacher: bool = True) -> list[dict]:
    """metrics.jsonl records (train, outer, eval) shaped like the trainer's, with plausible curves."""
    rng = np.random.default_rng(seed)
    ce = np.stack([_curve(5.6, 3.2 + 0.25 * i, steps, rng, 0.05) for i in range(num_peers)], axis=1)
    kl = np.stack([_curve(0.05, 0.4 + 0.05 * i, steps, rng, 0.01) for i in range(num_peers)], axis=1)
    logits = np.zeros(num_peers)
    omega = np.full(num_peers, 1.0 / num_peers)
    records: list[dict] = []
    for step in range(1, steps + 1):
        k = step - 1
        records.append({"kind": "train", "step": step, "tokens": step * 4096, "lr": 3e-3 * min(1.0, step / 10),
                        "ce": ce[k].tolist(), "kl": kl[k].tolist(), "loss": (0.5 * ce[k] + 0.5 * kl[k]).tolist(),
                        "omega": omega.tolist(), "tokens_per_s": float(20000 + rng.normal(0, 500))})
        if step % outer_every == 0:
            grad = ce[k] - ce[k].mean() + rng.normal(0, 0.02, num_peers)
            eta = 0.25 * (0.5 * (1 + math.cos(math.pi * min(1.0, step / steps))))
            logits = logits - eta * grad
            omega = np.exp(logits - logits.max())
            omega /= omega.sum()
            records.append({"kind": "outer", "step": step, "omega": omega.tolist(), "grad": grad.tolist(), "eta": eta,
                            "val_loss": float(ce[k].min() - 0.1), "info": {"hypergradient": "exact"}})
        if step % eval_every == 0:
            val = (ce[k] + 0.1).tolist()
            records.append({"kind": "eval", "step": step, "val_loss": val, "ensemble_val_loss": float(min(val) - 0.08),
                            "teacher_val_loss": 3.0 if with_teacher else None})
    return records


def write_synthetic_run(run_dir: Path, num_peers: int = 3, *, with_teacher: bool = True, steps: int = 40,
                        seed: int = 0, omega_in_summary: bool = True, tokenizer=None) -> dict:
    """A complete run folder with tiny random peers of different sizes; returns its facts
    (peer names, parameter counts, ω, the tokenizer)."""
    import tomli_w

    run_dir = Path(run_dir)
    tok = tokenizer or tiny_tokenizer(seed=seed)
    vocab = len(tok)
    shapes = [(16 + 8 * (num_peers - i), 2, 4) for i in range(num_peers)]  # (hidden, layers, heads), largest first
    peers = [tiny_llama(vocab, hidden=h, layers=l, heads=n, seed=seed + i, tokenizer=tok) for i, (h, l, n) in enumerate(shapes)]
    names = [f"peer_{i}" for i in range(num_peers)]
    for name, model in zip(names, peers):
        save_model(model, tok, run_dir / "peers" / name)
    teacher_params = None
    if with_teacher:
        teacher = tiny_llama(vocab, hidden=64, layers=2, heads=4, seed=seed + 100, tokenizer=tok)
        save_model(teacher, tok, run_dir / "teacher")
        teacher_params = sum(p.numel() for p in teacher.parameters())
    records = synthetic_metrics(num_peers, steps, seed, with_teacher=with_teacher)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    omega = [r for r in records if r["kind"] == "outer"][-1]["omega"]
    champion = int(np.argmin(last_eval["val_loss"]))
    shutil.copytree(run_dir / "peers" / names[champion], run_dir / "champion", dirs_exist_ok=True)
    params = [sum(p.numel() for p in m.parameters()) for m in peers]
    summary = {
        "peers": [{"name": n, "parameters": p, "shape": f"L{l}-H{nh}-D{h}", "val_loss": v}
                  for n, p, (h, l, nh), v in zip(names, params, shapes, last_eval["val_loss"])],
        "ensemble_val_loss": last_eval["ensemble_val_loss"], "champion": names[champion], "steps": steps,
        "teacher": {"parameters": teacher_params, "val_loss": 3.0} if with_teacher else None,
    }
    if omega_in_summary:
        summary["omega"] = omega
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "config.toml", tomli_w.dumps({"num_peers": num_peers, "block_size": 32, "seed": seed,
                                                              "val_fraction": 0.1, "corpus": "default"}))
    return {"names": names, "parameters": params, "omega": omega, "tokenizer": tok, "champion": names[champion],
            "teacher_parameters": teacher_params}


def repeat_pairs(source: Path, out_dir: Path, paradigms: int = 13, pairs: int = 1000) -> Path:
    """``paradigms`` files of ``pairs`` lines each, cycling through the pairs of ``source``
    (a folder of .jsonl files): a benchmark set of the real size from the shipped sample."""
    rows = []
    for f in sorted(Path(source).glob("*.jsonl")):
        rows.extend(json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    if not rows:
        raise ValueError(f"{source} holds no minimal pairs")
    sets = {}
    for p in range(paradigms):
        chosen = [dict(rows[(p * pairs + k) % len(rows)], UID=f"synthetic_{p:02d}") for k in range(pairs)]
        sets[f"synthetic_{p:02d}"] = chosen
    return write_minimal_pairs(out_dir, sets)
