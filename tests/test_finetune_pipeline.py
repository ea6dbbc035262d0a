"""The BabyLM 2025 pipeline's own fine-tuning (``evaluation_pipeline/finetune``, run as an outside client
from ``/work/shared/third_party/babylm-evaluation-pipeline-2025`` or ``$BABYLM_PIPELINE_2025``) on a
``wml run`` export, a causal LLaMA: with ``--take_final --padding_side left`` its classifier learns a
trivially learnable task; with its defaults it cannot.

Why: the pipeline's classifier pools one position's hidden state, token 0 by default. A causal export's
token 0 is BOS, which attends to nothing but itself, so every input gives the classifier the same
vector. ``--take_final`` pools the last position instead, and left padding makes that the last real
token of every row. The task: label 1 when a sentence contains the word "dog" (the SST-2 reader:
``{"sentence": …, "label": …}`` a line). ``trainer.py`` imports ``wandb`` at the top but uses it only
with ``--wandb``, so a stand-in is given when it is not installed (after transformers is imported,
whose accelerate integration asks whether wandb is installed). The pipeline pins transformers
4.51.3; this runs it unchanged on the transformers installed here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_helpers import TINY, toy_corpus
from test_babylm_pipeline_masked import PIPELINE

from wml_framework.cli import main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (PIPELINE / "evaluation_pipeline" / "finetune" / "run.py").is_file(),
                                 reason=f"the BabyLM 2025 evaluation pipeline is not at {PIPELINE}")]

#: the flags a causal wml export needs with the pipeline's classifier
DECODER_FLAGS = ["--take_final", "--padding_side", "left"]

DRIVER = textwrap.dedent("""
    import runpy, sys, types
    sys.path.insert(0, sys.argv[1])
    from transformers import AutoConfig, AutoModel, AutoProcessor  # noqa: F401  (before the stand-in)
    try:
        import wandb  # noqa: F401
    except ImportError:
        sys.modules["wandb"] = types.ModuleType("wandb")
    sys.argv = ["evaluation_pipeline.finetune.run", *sys.argv[2:]]
    runpy.run_module("evaluation_pipeline.finetune.run", run_name="__main__", alter_sys=True)
""")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The champion of a tiny ``wml run``: a LLaMA folder as wml exports it."""
    root = tmp_path_factory.mktemp("finetune")
    args = ["run", "--corpus", str(toy_corpus(root / "toy.txt", sentences=1500)), "--out", str(root / "run")]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    ran = CliRunner().invoke(main, args)
    assert ran.exit_code == 0, ran.output
    assert json.loads((root / "run" / "champion" / "config.json").read_text())["wml_objective"] == "causal"
    return root / "run" / "champion"


def toy_task(path: Path, n: int, seed: int) -> Path:
    """Balanced rows, label 1 when the sentence contains "dog"."""
    rnd = random.Random(seed)
    nouns, verbs = ["cat", "dog", "bird", "girl", "boy", "king", "fox"], ["sees", "likes", "finds", "helps"]
    rows = []
    while len(rows) < n:
        sentence = f"the {rnd.choice(nouns)} {rnd.choice(verbs)} the {rnd.choice(nouns)} ."
        label = int("dog" in sentence.split())
        if sum(r["label"] == label for r in rows) < n // 2:
            rows.append({"sentence": sentence, "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finetune(export: Path, out: Path, train: Path, valid: Path, flags: list[str]) -> dict:
    """The pipeline's fine-tuning run, as eval_finetuning.sh runs it (a learning rate for a tiny model)."""
    args = ["--model_name_or_path", str(export), "--train_data", str(train), "--valid_data", str(valid),
            "--predict_data", str(valid), "--task", "sst2", "--num_labels", "2", "--metrics", "accuracy", "mcc",
            "--metric_for_valid", "accuracy", "--batch_size", "16", "--learning_rate", "1e-3", "--num_epochs", "5",
            "--sequence_length", "32", "--results_dir", str(out), *flags]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(PIPELINE), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = out / export.name / "main" / "finetune" / "sst2"
    metrics = dict(line.split(": ") for line in (folder / "results.txt").read_text().splitlines())
    return {**{k: float(v) for k, v in metrics.items()}, "predictions": json.loads((folder / "predictions.json").read_text())}


def test_the_pipelines_classifier_learns_from_a_causal_export_with_the_decoder_flags(tmp_path, export):
    """Catches: flags documented for decoders that do not make the pipeline's classifier learn (accuracy
    ≥ 0.9 on a task a bag of words solves), and the defaults' failure going unnoticed (they must stay at
    chance here, or the flags are not what made the difference)."""
    train, valid = toy_task(tmp_path / "toy.train.jsonl", 400, 0), toy_task(tmp_path / "toy.valid.jsonl", 100, 1)
    labels = [json.loads(line)["label"] for line in valid.read_text().splitlines()]
    flagged = finetune(export, tmp_path / "flags", train, valid, DECODER_FLAGS)
    default = finetune(export, tmp_path / "default", train, valid, [])
    print(f"decoder flags: accuracy {flagged['accuracy']:.3f} mcc {flagged['mcc']:.3f}; "
          f"defaults: accuracy {default['accuracy']:.3f} mcc {default['mcc']:.3f}")
    assert flagged["accuracy"] >= 0.9 and flagged["mcc"] >= 0.8
    preds = flagged["predictions"]["sst2"]["predictions"]
    assert [p["id"] for p in preds] == [f"sst2_{i}" for i in range(len(labels))]
    assert sum(p["pred"] == y for p, y in zip(preds, labels)) >= 0.9 * len(labels)
    assert 0.4 <= default["accuracy"] <= 0.6 and abs(default["mcc"]) < 0.1
