"""What the end-to-end tests share: a tiny configuration, a learnable toy corpus, metrics reading."""

from __future__ import annotations

import json
import random
from pathlib import Path

from wml_framework import config as cfgmod

TINY = {
    "vocab_size": 300, "block_size": 32, "batch_size": 4, "num_batches": 1,
    "teacher_n_layer": 2, "teacher_n_embd": 32, "teacher_n_head": 2, "teacher_steps": 20,
    "num_peers": 2, "max_steps": 12, "warmup_iters": 2, "lr_decay_iters": 12,
    "learning_rate": 3e-3, "min_lr": 3e-4, "outer_every": 2, "eval_interval": 4, "eval_batches": 2,
    "bayesian_init_points": 3, "bayesian_n_iter": 4, "checkpoint_interval": 4, "blimp_limit": 5,
    "enable_early_stopping": False, "device": "cpu", "omega_lr": 1.0, "omega_min_lr": 0.1,
}


def toy_corpus(path: Path, sentences: int = 3000, seed: int = 0) -> Path:
    """A learnable toy language: agreement between subject and verb, a few nouns and verbs."""
    rnd = random.Random(seed)
    nouns = ["cat", "dog", "bird", "girl", "boy", "king", "fox"]
    verbs = ["sees", "likes", "finds", "helps"]
    lines = []
    for _ in range(sentences):
        a, b = rnd.choice(nouns), rnd.choice(nouns)
        plural = rnd.random() < 0.5
        verb = rnd.choice(verbs)
        subject = f"the {a}s" if plural else f"the {a}"
        verb = verb[:-1] if plural else verb
        lines.append(f"{subject} {verb} the {b}.")
    text = "\n\n".join(" ".join(lines[i:i + 5]) for i in range(0, len(lines), 5))
    path.write_text(text, encoding="utf-8")
    return path


def tiny_config(corpus: Path, host=None, **changes) -> cfgmod.WMLConfig:
    """TINY on ``corpus``, validated against ``host`` (default: the command line's plugins)."""
    return cfgmod.from_dict({**TINY, "corpus": str(corpus), **changes}, host=host)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def tiny_loop(tmp_path: Path, **changes):
    """A ``TrainingLoop`` of two tiny LLaMA peers on random tokens (no teacher), for tests of one step.
    Returns (config, token data, loop)."""
    import numpy as np
    import torch
    from helpers_models import build, tiny_llama_config

    from wml_framework.plugin_system.host import PluginHost
    from wml_framework.runner import create_plugins
    from wml_framework.text.tokens import TokenData
    from wml_framework.training.loop import TrainingLoop

    cfg = cfgmod.from_dict({"device": "cpu", "batch_size": 4, "block_size": 16, "num_batches": 2, "vocab_size": 300,
                            "max_steps": 2, "eval_batches": 2, "threads": "1", "num_peers": 2, **changes})
    rng = np.random.default_rng(0)
    data = TokenData(rng.integers(3, 128, 5000).astype(np.uint16), rng.integers(3, 128, 2000).astype(np.uint16),
                     None, 128)
    peers = [build(tiny_llama_config(hidden=32, n_head=2), seed=i).train() for i in range(cfg.num_peers)]
    host = PluginHost()
    plugins = create_plugins(cfg, host)
    loop = TrainingLoop(cfg, host, peers, data, tmp_path, torch.device(cfg.device), loss=plugins.loss,
                        updater=plugins.updater, log=lambda m: None)
    return cfg, data, loop
