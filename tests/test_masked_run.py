"""Masked and hybrid objectives end to end: ``wml run --objective masked`` on the embedded corpus,
its exports, ``wml eval``, resume, ``wml compare``, and the one-line refusals before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from run_helpers import TINY

from wml_framework.api import TokenInfo
from wml_framework.cli import main

SMALL = {**TINY, "teacher_steps": 10, "max_steps": 6, "lr_decay_iters": 6, "eval_interval": 3,
         "checkpoint_interval": 3, "blimp_limit": 3, "threads": "1"}


def _sets(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return out


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("masked") / "run"
    result = CliRunner().invoke(main, ["run", "--objective", "masked", *_sets(SMALL), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_a_masked_run_on_the_embedded_corpus_trains_a_roberta_teacher_and_its_peers(masked_run):
    """Catches a masked run that silently trains causal models, a teacher of the wrong family, or
    a summary that calls a masked-token loss a perplexity."""
    from transformers import AutoConfig

    summary = json.loads((masked_run / "summary.json").read_text())
    assert summary["config"]["objective"] == "masked" and summary["measure"] == "masked-token loss"
    teacher = AutoConfig.from_pretrained(masked_run / "teacher")
    assert teacher.model_type == "roberta" and teacher.architectures == ["RobertaForMaskedLM"]
    records = [json.loads(line) for line in (masked_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["ensemble_val_loss"] < evals[0]["ensemble_val_loss"]
    report = (masked_run / "report.md").read_text()
    assert "held-out masked-token loss" in report and "| held-out loss |" not in report


@pytest.mark.slow
def test_masked_exports_load_as_masked_lms_and_sequence_classifiers(masked_run):
    """Catches exports saved with a causal head, or without the objective ``wml eval`` reads."""
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for folder in (masked_run / "peers" / "peer_0", masked_run / "champion", masked_run / "teacher"):
        mlm = AutoModelForMaskedLM.from_pretrained(folder)
        assert type(mlm).__name__ == "RobertaForMaskedLM"
        assert mlm.config.wml_objective == "masked" and mlm.config.wml_objective_scoring == "mlm"
        clf = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.mask_token is not None
        batch = tok(["the cat sees the dog.", "the dogs see."], return_tensors="pt", padding=True)
        with torch.no_grad():
            assert clf(**batch).logits.shape == (2, 3)


@pytest.mark.slow
def test_wml_eval_scores_a_masked_run_by_its_masked_token_loss(masked_run):
    """Catches ``wml eval`` scoring a masked model as a causal one (its next-token 'perplexity' is
    meaningless) or labelling the masked-token loss a perplexity."""
    result = CliRunner().invoke(main, ["eval", str(masked_run), "--set", "blimp_limit=3"])
    assert result.exit_code == 0, result.output
    data = json.loads((masked_run / "eval.json").read_text())
    for name in ("peer_0", "ensemble", "teacher"):
        ppl = data["models"][name]["perplexity"]
        assert ppl["objective"] == "masked" and ppl["measure"] == "masked-token loss"
    assert "masked-token loss" in result.output
    assert all(data["models"][n]["minimal_pairs"]["scoring"] == "mlm" for n in ("peer_0", "ensemble", "teacher"))
    again = CliRunner().invoke(main, ["eval", str(masked_run), "--set", "blimp_limit=2", "--evaluator", "minimal_pairs",
                                      "--set", "minimal_pairs.scoring=mntp"])
    assert again.exit_code == 0, again.output
    data = json.loads((masked_run / "eval.json").read_text())
    assert data["models"]["peer_0"]["minimal_pairs"]["scoring"] == "mntp"


def test_a_masked_loop_resumes_bit_identically(tmp_path):
    """Catches masking drawn outside the checkpointed generator (a resumed masked run would see
    other masks than an uninterrupted one)."""
    from run_helpers import tiny_loop

    tokens = TokenInfo(vocab_size=128, mask_token_id=3, special_ids=(0, 1, 2, 3))

    def loop(path):
        cfg, data, lp = tiny_loop(path, objective="masked", max_steps=4)
        lp.tokens = tokens
        return lp

    straight = loop(tmp_path / "a")
    for _ in range(4):
        straight.step()
    first = loop(tmp_path / "b")
    for _ in range(2):
        first.step()
    state = first.state_dict()
    resumed = loop(tmp_path / "c")
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    for p, q in zip(straight.peers, resumed.peers):
        assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(), q.state_dict().values()))


def test_a_hybrid_loops_outer_steps_take_both_attentions(tmp_path):
    """The loop builds each outer step's validation batch, and runs it, under its step's attention.
    Catches an outer step that always lands on one attention (ω tuned for half the objective), or
    one whose batch and attention disagree (masked inputs read causally)."""
    from run_helpers import tiny_loop

    cfg, data, lp = tiny_loop(tmp_path, objective="hybrid", outer_every=2, updater="mirror", max_steps=24)
    lp.tokens = TokenInfo(vocab_size=128, mask_token_id=3, special_ids=(0, 1, 2, 3))
    inner, seen = lp.objective, []

    class Recorder:
        def __getattr__(self, name):
            return getattr(inner, name)

        def batch(self, block, step, gen, tokens):
            if gen is lp.gen_outer:
                seen.append((inner.attention(step), getattr(lp.peers[0], "wml_attention", None)))
            return inner.batch(block, step, gen, tokens)

    lp.objective = Recorder()
    for _ in range(24):
        lp.step()
    assert len(seen) == 12 and all(asked == running for asked, running in seen), seen
    assert {asked for asked, _ in seen} == {"causal", "bidirectional"}, seen


@pytest.mark.parametrize("capture", [False, True])
def test_masked_shares_of_a_data_parallel_step_weigh_their_tokens_as_one_process(tmp_path, capture):
    """Two ranks (simulated in process: each keeps its share of the rows, the test averages what
    the all-reduce would) give the gradient and logged losses of one process on the whole batch,
    over two micro-batches. Masking labels a random number of tokens per share, so catches a step
    that averages the shares' (or micro-batches') token means as equals."""
    from run_helpers import tiny_loop

    from wml_framework.runtime.distributed import SINGLE, Context

    class Rank(Context):
        def mean_(self, tensors):          # the test averages the ranks itself
            pass

    tokens = TokenInfo(vocab_size=128, mask_token_id=3, special_ids=(0, 1, 2, 3))

    def accumulate(path, dist):
        cfg, data, lp = tiny_loop(path, objective="masked", num_batches=2, outer_every=1)
        lp.tokens, lp.dist = tokens, dist
        means, _ = lp.accumulate(capture=capture)
        return means, [[p.grad.clone() for p in peer.parameters()] for peer in lp.peers]

    one_means, one_grads = accumulate(tmp_path / "one", SINGLE)
    ranks = [accumulate(tmp_path / f"r{r}", Rank(rank=r, world=2)) for r in range(2)]
    means = (ranks[0][0] + ranks[1][0]) / 2
    assert torch.allclose(means, one_means, rtol=1e-5, atol=1e-6), (means, one_means)
    for i, grads in enumerate(one_grads):
        for g, a, b in zip(grads, ranks[0][1][i], ranks[1][1][i]):
            assert torch.allclose((a + b) / 2, g, rtol=1e-4, atol=1e-6)


class _Recorded(Exception):
    """Stops a run once the initializer has seen its calibration batch (the host wraps it, naming
    the plugin)."""


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_the_initializers_calibration_batch_is_made_by_the_objective(tmp_path, corpus, objective):
    """An initializer (l1's taylor importance) gets a batch as the objective makes them. Catches a
    masked run that calibrates on next-token labels, which a bidirectional teacher reads off its
    own input."""
    from run_helpers import tiny_config

    from wml_framework import hookimpl
    from wml_framework.plugin_system.host import PluginHost
    from wml_framework.runner import WMLTrainer

    seen = {}

    class Recording:
        @hookimpl
        def wml_register_initializers(self, register):
            class Init:
                def __init__(self, cfg):
                    pass

                def check(self, teacher_config, family, targets, *, calibration=None):
                    pass

                def build(self, teacher, family, targets, *, calibration=None, seed=0):
                    seen["batch"], seen["mask"] = calibration, teacher.config.vocab_size
                    raise _Recorded

            register("recording", Init)

    host = PluginHost()
    host.register(Recording(), "recording")
    cfg = tiny_config(corpus, host, objective=objective, init="recording", teacher_steps=2, max_steps=1,
                      lr_decay_iters=1, blimp="")
    with pytest.raises(Exception, match="_Recorded"):
        WMLTrainer.from_config(cfg, tmp_path / "run", host=host, log=lambda m: None).train()
    x, y = seen["batch"].inputs, seen["batch"].labels
    labelled = y != -100
    if objective == "causal":
        assert bool(labelled.all()) and torch.equal(x[:, 1:], y[:, :-1])
    else:
        assert 0 < float(labelled.float().mean()) < 0.5
        from wml_framework.text.tokenizer import load_tokenizer

        mask_id = load_tokenizer(tmp_path / "run" / "teacher").mask_token_id
        assert bool((x == mask_id).any()) and not bool((x[labelled] == y[labelled]).all())


# -- refusals before any work ------------------------------------------------------------------

def _refused(args, tmp_path) -> str:
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["run", *_sets(SMALL), *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert not (out / "config.toml").exists()
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error") or "error" in line]
    assert len(lines) == 1, result.output
    return result.output


def test_a_masked_objective_with_a_causal_teacher_family_is_refused(tmp_path):
    out = _refused(["--objective", "masked", "--set", "teacher_family=llama"], tmp_path)
    assert "objective 'masked' trains a masked LM" in out and "--objective causal" in out


def test_a_hybrid_objective_on_a_model_that_attends_one_way_is_refused(tmp_path):
    out = _refused(["--objective", "hybrid", "--set", "teacher_family=deberta-v2"], tmp_path)
    assert "ignores a causal attention mask" in out and "RoBERTa and BERT" in out


def test_a_given_teacher_without_a_mask_token_is_refused(tmp_path):
    """A RoBERTa teacher whose tokenizer has no mask token cannot train with masking."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from wml_framework.text.tokenizer import train_tokenizer

    tok = train_tokenizer(["the cat sees the dog."] * 50, 300)
    teacher = tmp_path / "teacher"
    RobertaForMaskedLM(RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    out = _refused(["--objective", "masked", "--teacher", str(teacher)], tmp_path)
    assert "needs a mask token" in out


@pytest.mark.slow
def test_a_hybrid_run_trains_and_stamps_mntp_scoring(tmp_path):
    out = tmp_path / "hybrid"
    result = CliRunner().invoke(main, ["run", "--objective", "hybrid", *_sets({**SMALL, "teacher_steps": 6, "max_steps": 4,
                                                                               "lr_decay_iters": 4}), "--out", str(out)])
    assert result.exit_code == 0, result.output
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out / "peers" / "peer_0")
    assert config.wml_objective == "hybrid" and config.wml_objective_scoring == "mntp"
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["models"]["peer_0"]["minimal_pairs"]["scoring"] == "mntp"
    assert evaluation["models"]["peer_0"]["perplexity"]["measure"] == "next-token loss"


@pytest.mark.slow
def test_compare_runs_masked_methods(tmp_path):
    """``wml compare --set objective=masked --methods wml,kd,ce --seeds 2`` (tiny settings)."""
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", "--set", "objective=masked",
                                       *_sets({**SMALL, "max_steps": 4, "lr_decay_iters": 4, "blimp_limit": 2}),
                                       "--methods", "wml,kd,ce", "--seeds", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in out.rglob("summary.json") if "teacher" not in p.parts)
    assert len(runs) >= 6
    assert all(json.loads(p.read_text())["config"]["objective"] == "masked" for p in runs)
    table = (out / "comparison.md").read_text()
    assert "| held-out masked-token loss |" in table


@pytest.mark.slow
def test_an_interrupted_masked_run_resumes_to_the_uninterrupted_result(tmp_path, masked_run):
    """Catches a masked run whose resume masks differently from an uninterrupted one (the masks come
    from the checkpointed generator) or loses the objective on resume."""
    from safetensors.torch import load_file

    from wml_framework import config as cfgmod
    from wml_framework import hookimpl, runner
    from wml_framework.plugin_system.host import PluginHost

    class Interrupt:
        @hookimpl
        def wml_run_event(self, event, payload):
            if event == "train" and payload["step"] == 4:
                raise KeyboardInterrupt

    cfg = cfgmod.from_dict({**SMALL, "objective": "masked"})
    run_dir = tmp_path / "interrupted"
    host = PluginHost()
    host.register(Interrupt(), "interrupt-at-4")
    with pytest.raises(KeyboardInterrupt):
        runner.start(cfg, run_dir, log=lambda m: None, host=host)
    runner.resume(run_dir, log=lambda m: None)
    for i in range(2):
        a = load_file(masked_run / "peers" / f"peer_{i}" / "model.safetensors")
        b = load_file(run_dir / "peers" / f"peer_{i}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_roberta_teachers_context_excludes_its_position_offset(tmp_path):
    """RoBERTa numbers positions from pad_token_id + 1: a table of 34 rows with pad id 1 holds 32
    tokens. Catches a check that reads max_position_embeddings raw (a block of 33 would pass, then
    index past the table)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from wml_framework.evaluation.models import max_positions
    from wml_framework.text.tokenizer import train_tokenizer

    tok = train_tokenizer(["the cat sees the dog."] * 50, 300, mask_token=True)
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, max_position_embeddings=34,
                                             pad_token_id=1))
    assert max_positions(model) == 32
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    out = _refused(["--objective", "masked", "--teacher", str(teacher), "--set", "block_size=33"], tmp_path)
    assert "expected at most its 32 positions" in out


def _roberta_teacher(tmp_path, stamp: dict | None = None) -> Path:
    """A tiny RoBERTa teacher folder with a mask token, stamped with ``stamp`` config attributes."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from wml_framework.text.tokenizer import train_tokenizer

    tok = train_tokenizer(["the cat sees the dog."] * 50, 300, mask_token=True)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                           **(stamp or {}))
    teacher = tmp_path / "teacher"
    RobertaForMaskedLM(config).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    return teacher


def test_a_masked_teacher_in_a_hybrid_run_is_refused(tmp_path):
    """A RoBERTa from elsewhere predicts its own (masked) position; a hybrid run's labels are the
    next token. Catches a run that distils every teacher prediction one position off."""
    teacher = _roberta_teacher(tmp_path)
    out = _refused(["--objective", "hybrid", "--loss", "kd", "--teacher", str(teacher)], tmp_path)
    assert "predicts the masked token at its own position (mlm)" in out and "objective 'hybrid'" in out
    assert "the next token, masked or not (mntp)" in out


def test_a_hybrid_teacher_in_a_masked_run_is_refused(tmp_path):
    teacher = _roberta_teacher(tmp_path, {"wml_objective": "hybrid", "wml_objective_scoring": "mntp"})
    out = _refused(["--objective", "masked", "--loss", "kd", "--teacher", str(teacher)], tmp_path)
    assert "was trained with objective 'hybrid'" in out and "objective 'masked' asks for" in out


def test_a_loss_that_reads_no_teacher_takes_any_masked_teacher(tmp_path):
    """The refusal is about distillation only: ``wml`` (the peers teach each other) reads no teacher,
    which then only sizes the peers. Catches a check that refuses every mismatched teacher."""
    teacher = _roberta_teacher(tmp_path)
    out = tmp_path / "ce"
    result = CliRunner().invoke(main, ["run", "--objective", "hybrid", "--teacher", str(teacher),
                                       *_sets({**SMALL, "max_steps": 1, "lr_decay_iters": 1, "eval_interval": 1,
                                               "checkpoint_interval": 1, "blimp_limit": 1}),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["config"]["objective"] == "hybrid"
