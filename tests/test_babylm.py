"""BabyLM readiness: the corpus as the BabyLM download lays it out, its documents and cleaning, bad
corpus input, and exported folders that the BabyLM evaluation pipeline loads and scores as wml does.

Would catch: `.train`/`.dev` files ignored, the dev/ folder ignored (held-out chunks carved out of
train instead), a line-per-utterance file read as one giant document, speaker labels or headers
trained on, a traceback or a stub run folder for a bad corpus, exported folders without PAD or
whose sequence-classification head cannot batch, and training text presented unlike the pipeline's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from run_helpers import TINY

from wml_framework.cli import main
from wml_framework.text.corpus import CorpusError, iter_documents, plan_corpus

NOUNS, VERBS = ["cat", "dog", "bird", "girl", "boy", "king", "fox"], ["sees", "likes", "finds", "helps"]


def _sentence(rnd: random.Random) -> str:
    a, b, verb = rnd.choice(NOUNS), rnd.choice(NOUNS), rnd.choice(VERBS)
    if rnd.random() < 0.5:
        return f"the {a}s {verb[:-1]} the {b} ."
    return f"the {a} {verb} the {b} ."


def babylm_folder(root: Path, lines: int = 600, seed: int = 0) -> Path:
    """``root/train_10M/*.train`` and ``root/dev/*.dev`` laid out as the BabyLM 2024 download:
    one item a line, no blank lines, CHILDES speaker labels, Wikipedia section headers."""
    rnd = random.Random(seed)
    for folder, suffix, n in (("train_10M", ".train", lines), ("dev", ".dev", lines // 3)):
        (root / folder).mkdir(parents=True)
        (root / folder / f"childes{suffix}").write_text(
            "".join(f"*{rnd.choice(['MOT', 'CHI', 'FAT'])}:\t{_sentence(rnd)}\n" for _ in range(n)))
        (root / folder / f"simple_wiki{suffix}").write_text(
            "".join(("= = = Animals = = =\n" if i % 20 == 0 else "") + _sentence(rnd).capitalize() + "\n"
                    for i in range(n)))
        for name in ("gutenberg", "open_subtitles"):
            (root / folder / f"{name}{suffix}").write_text("".join(_sentence(rnd) + "\n" for _ in range(n)))
    return root / "train_10M"


# ------------------------------------------------------------------ corpus layout, documents, cleaning

def test_the_babylm_layout_takes_its_held_out_text_from_dev(tmp_path):
    train = babylm_folder(tmp_path)
    plan = plan_corpus(str(train))
    assert [f.name for f in plan.train] == ["childes.train", "gutenberg.train", "open_subtitles.train", "simple_wiki.train"]
    assert [f.parent.name for f in plan.heldout] == ["dev"] * 4 and "dev/ folder beside train_10M/" in plan.heldout_from
    explicit = plan_corpus(str(train), str(tmp_path / "dev" / "childes.dev"))
    assert [f.name for f in explicit.heldout] == ["childes.dev"] and "val_corpus" in explicit.heldout_from
    alone = plan_corpus(str(train / "childes.train"))
    assert alone.heldout == [] and "every k-th chunk" in alone.heldout_from


def test_documents_are_lines_or_paragraphs_and_cleaning_drops_labels_and_headers(tmp_path):
    lines = tmp_path / "chat.train"
    lines.write_text("*MOT:\tyou want the ball ?\n= = = Toys = = =\n*CHI:\tball  please .\n")
    book = tmp_path / "book.txt"
    book.write_text("It was a bright\ncold day in April.\n\nThe clocks were\nstriking thirteen.\n")
    assert list(iter_documents([lines])) == ["you want the ball ?", "ball please ."]
    assert list(iter_documents([lines], clean=False)) == ["*MOT:\tyou want the ball ?", "= = = Toys = = =",
                                                           "*CHI:\tball  please ."]
    assert list(iter_documents([book])) == ["It was a bright cold day in April.", "The clocks were striking thirteen."]


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "empty_dir").mkdir() or d / "empty_dir", "holds no text files"),
    (lambda d: (d / "empty.txt").write_text("") or d / "empty.txt", "is empty"),
    (lambda d: (d / "random.txt").write_bytes(np.random.default_rng(0).bytes(50_000)) and d / "random.txt",
     "is not text"),
])
def test_a_bad_corpus_is_one_line_exit_2_and_no_run_folder(tmp_path, make, needle):
    corpus = make(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--corpus", str(corpus), "--out", str(out)])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert needle in errors[0] and str(corpus) in errors[0]
    assert not out.exists()
    with pytest.raises(CorpusError):
        plan_corpus(str(corpus))


def test_training_text_is_presented_as_the_pipeline_presents_a_sentence(tmp_path):
    """BOS, then the document with a leading space: ' the cat sees the dog .', as the BabyLM 2024
    pipeline scores ' ' + sentence after its prefix token."""
    from wml_framework.text.tokens import prepare

    train = babylm_folder(tmp_path, lines=300)
    data = prepare(str(train), 300, 0.05, cache=tmp_path / "cache", log=lambda m: None)
    tok, stream = data.tokenizer, np.asarray(data.train[:200], dtype=np.int64)
    assert stream[0] == tok.bos_token_id
    end = int(np.argmax(stream == tok.eos_token_id))
    first = tok.decode(stream[1:end].tolist())
    assert first.startswith(" ") and "*" not in first and first.strip().startswith("the ")
    assert tok.encode("The dog", add_special_tokens=False) == tok.encode(" The dog", add_special_tokens=False)


# ------------------------------------------------------------------ a run on the BabyLM layout, and its folders

@pytest.fixture(scope="module")
def babylm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("babylm")
    train = babylm_folder(root)
    out = root / "run"
    args = ["run", "--corpus", str(train), "--out", str(out), "--set", "blimp_limit=4"]
    for key, value in TINY.items():
        if key not in ("blimp_limit",):
            args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_a_run_on_the_babylm_layout_uses_dev_as_its_held_out_text(babylm_run):
    out, log = babylm_run
    assert "held-out text: the dev/ folder beside train_10M/" in log
    assert json.loads((out / "summary.json").read_text())["steps"] == TINY["max_steps"]


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["peers/peer_0", "champion", "teacher"])
def test_exported_folders_load_in_the_babylm_pipeline(babylm_run, folder):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from wml_framework.evaluation import minimal_pairs

    path = babylm_run[0] / folder
    tok = AutoTokenizer.from_pretrained(path)
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_token_id, tok.eos_token_id,
                                                                             tok.pad_token_id)
    classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    batch = tok(["the cat sees the dog .", "the dogs like the bird and the fox ."], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()      # really padded
    with torch.no_grad():
        assert classifier(**batch).logits.shape == (2, 2)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    good, bad = "the cat sees the dog .", "the cat see the dog ."
    ours = minimal_pairs.pair_logprobs(model, tok, [minimal_pairs.MinimalPair(good, bad, "agreement", 1)])
    for sentence, score in zip((good, bad), (ours[0][0], ours[1][0])):   # the 2024 pipeline's loglikelihood
        continuation = tok.encode(" " + sentence, add_special_tokens=False)
        ids = torch.tensor([[tok.bos_token_id, *continuation]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.double(), -1)
        assert score == pytest.approx(float(logp[0, torch.arange(len(continuation)), ids[0, 1:]].sum()), abs=1e-4)


@pytest.mark.slow
def test_wml_eval_writes_babylm_submission_predictions(babylm_run, tmp_path):
    out = babylm_run[0]
    preds = tmp_path / "preds"
    result = CliRunner().invoke(main, ["eval", str(out / "champion"), "--corpus", "none", "--limit", "3",
                                       "--set", f"minimal_pairs.predictions_dir={preds}",
                                       "--set", "minimal_pairs.babylm_format=2024"])
    assert result.exit_code == 0, result.output
    data = json.loads((preds / "champion.json").read_text())
    assert set(data) == {"blimp", "blimp_supplement"} and data["blimp_supplement"] == {}
    assert len(data["blimp"]) == 8
    transitive = data["blimp"]["transitive"]["predictions"]
    assert [p["id"] for p in transitive] == ["transitive_0", "transitive_1", "transitive_2"]
    assert all(p["pred"].startswith(" ") for p in transitive)
