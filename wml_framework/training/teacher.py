"""The teacher: a Hugging Face causal LM loaded from a folder, or a small one trained first.

A trained teacher goes through the peers' :class:`~.loop.TrainingLoop` (one model, the ``ce`` loss
plugin, the ``uniform`` updater, which never moves ω = [1]): checkpoints, signals, the NaN guard
(``nonfinite_patience``), threads and records are the peers' code. Its :func:`teacher_settings`
differ from the peers' as they always did: ``teacher_steps`` steps at ``teacher_learning_rate``
(floor a tenth of it; warm-up min(``warmup_iters``, ``teacher_steps``//10); cosine decay over
``teacher_steps``), one micro-batch per step, its own seeds, checkpoints of kind ``teacher``, records
in ``teacher_metrics.jsonl`` (never ``metrics.jsonl``, which a peers' resume cuts back), a held-out
evaluation every tenth of its steps, no early stopping, and rank 0 alone in a data-parallel run.
Run observers do not hear its steps (their ``train`` events are the peers'); callbacks do, with
``state.model == "teacher"``, and the run's log gets a line every tenth of its steps.

Since it shares the peers' AdamW, weight decay now spares biases and norm weights (dim < 2), as it
does for the peers; before, the teacher's AdamW decayed every parameter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..api import build_model, model_class
from ..config import WMLConfig
from ..plugin_system.guards import checked_loss, checked_updater
from ..plugin_system.host import PluginHost
from ..runtime import checkpoint
from ..runtime.placement import REPLICATE
from ..runtime.run_layout import TEACHER_METRICS_FILE
from ..text.tokens import TokenData
from .loop import TrainingLoop
from .loop_settings import TEACHER, LoopSettings

__all__ = ["WEIGHT_PATTERNS", "TEACHER_LOSS", "TEACHER_UPDATER", "TeacherError", "check_teacher_dir",
           "load_teacher_config", "load_teacher", "teacher_config", "new_teacher", "teacher_settings",
           "TeacherProgress", "teacher_loop", "train_teacher"]

#: files any one of which holds a Hugging Face model's weights
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
#: the plugins a trained teacher's loop uses: plain next-token cross-entropy, ω fixed at [1]
TEACHER_LOSS, TEACHER_UPDATER = "ce", "uniform"


class TeacherError(ValueError):
    """The teacher folder is missing, not a model, or of a family no plugin knows."""


def check_teacher_dir(path: str | Path) -> Path:
    """Fail early, before any work, when ``path`` is not a Hugging Face model folder."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise TeacherError(f"teacher {str(p)!r} is not a directory")
    if not (p / "config.json").is_file():
        raise TeacherError(f"teacher {str(p)!r} has no config.json: not a Hugging Face model folder")
    if not any(any(p.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise TeacherError(f"teacher {str(p)!r} has no weights (*.safetensors or *.bin)")
    return p


def load_teacher_config(path: str | Path):
    """The teacher's Hugging Face config, read without loading its weights."""
    from transformers import AutoConfig

    p = check_teacher_dir(path)
    try:
        return AutoConfig.from_pretrained(str(p))
    except Exception as exc:  # noqa: BLE001 - any failure means: not a usable model folder
        raise TeacherError(f"teacher {str(p)!r} is not a Hugging Face model directory "
                           f"(its config.json cannot be loaded: {exc})") from None


def load_teacher(path: str | Path, dtype=torch.float32):
    """Model (eval mode) and, when the folder has one, its tokenizer (else ``None``)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    p = check_teacher_dir(path)
    quiet = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # its load report is ours to give, in one line
    try:
        model, info = model_class(load_teacher_config(p)).from_pretrained(p, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if "mismatched" in str(exc):
            raise TeacherError(f"teacher {str(p)!r}: its weights do not match its config.json (tensor shapes differ)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"teacher {str(p)!r} cannot be loaded as a language model: {first}") from None
    finally:
        hf_logging.set_verbosity(quiet)
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys", "unexpected_keys") and v}
    if problems:
        kind, names = next(iter(problems.items()))
        raise TeacherError(f"teacher {str(p)!r}: its weights do not match its config.json ({kind.replace('_', ' ')}: "
                           f"{', '.join(map(str, names[:3]))}{' …' if len(names) > 3 else ''}); a model with "
                           "randomly initialised parts would be a silently wrong teacher")
    try:
        tokenizer = AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model.eval(), tokenizer


def teacher_config(family, cfg: WMLConfig, tokenizer, max_positions: int):
    """The Hugging Face config of the teacher ``wml run`` trains: the configured size, the
    family's usual FFN width for it, and the tokenizer's special tokens."""
    hidden = cfg.teacher_n_embd
    return family.make_config(
        vocab_size=len(tokenizer), n_layer=cfg.teacher_n_layer, n_head=cfg.teacher_n_head,
        head_dim=hidden // cfg.teacher_n_head, ffn=family.default_ffn(hidden), max_positions=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def new_teacher(hf_config, seed: int):
    """A freshly initialised model of ``hf_config`` (seeded)."""
    torch.manual_seed(seed)
    return build_model(hf_config)


def teacher_settings(cfg: WMLConfig) -> LoopSettings:
    """The teacher's training, as ``wml run`` has always trained it (see the module's docstring)."""
    steps = cfg.teacher_steps
    return LoopSettings(model=TEACHER, phase="teacher", max_steps=steps, learning_rate=cfg.teacher_learning_rate,
                        min_lr=cfg.teacher_learning_rate / 10, warmup_iters=min(cfg.warmup_iters, steps // 10),
                        lr_decay_iters=steps, num_batches=1, train_seed=cfg.seed + 1, outer_seed=cfg.seed + 2,
                        eval_interval=max(1, steps // 10), early_stopping=False, checkpoint_kind=checkpoint.TEACHER,
                        metrics_file=TEACHER_METRICS_FILE, announced=False, data_parallel=False, placement=REPLICATE)


class TeacherProgress:
    """A callback that writes the teacher's progress to the run's log every tenth of its steps
    (run observers, the usual progress display, hear the peers' steps only)."""

    def __init__(self, log):
        self.log, self.started = log, time.time()

    def on_train(self, record: dict, state, control) -> None:
        if state.model == TEACHER and (state.step % max(1, state.max_steps // 10) == 0 or state.step == state.max_steps):
            loss = record["loss"][0]
            self.log(f"teacher: step {state.step}/{state.max_steps} loss {'nan' if loss is None else f'{loss:.3f}'} "
                     f"({time.time() - self.started:.0f}s)")


def teacher_loop(model, data: TokenData, cfg: WMLConfig, device: torch.device, *, host: PluginHost, run_dir,
                 log=print, callbacks: Sequence = ()) -> TrainingLoop:
    """The loop that trains ``model`` as the teacher (the plugins checked as a run's are)."""
    loss = checked_loss(host.create("loss", TEACHER_LOSS, cfg, options=cfg.plugin_options(TEACHER_LOSS)),
                        host.get("loss", TEACHER_LOSS))
    updater = checked_updater(host.create("updater", TEACHER_UPDATER, cfg, 1, options=cfg.plugin_options(TEACHER_UPDATER)),
                              host.get("updater", TEACHER_UPDATER), 1)
    return TrainingLoop(cfg, host, [model], data, Path(run_dir), device, loss=loss, updater=updater, log=log,
                        callbacks=[TeacherProgress(log), *callbacks], settings=teacher_settings(cfg))


def train_teacher(model, data: TokenData, cfg: WMLConfig, device: torch.device, *, host: PluginHost, run_dir,
                  log=print, callbacks: Sequence = ()):
    """Train ``model`` as the teacher; returns it in eval mode.

    Resumes from the newest whole ``teacher`` checkpoint in ``run_dir``, bit for bit; a signal
    finishes the step, writes a checkpoint and raises ``Interrupted``
    (:mod:`wml_framework.runtime.interrupts`); a model whose loss or gradient stays non-finite for
    ``nonfinite_patience`` steps raises ``TrainingError`` naming the teacher."""
    loop = teacher_loop(model, data, cfg, device, host=host, run_dir=run_dir, log=log, callbacks=callbacks)
    state = _usable_checkpoint(run_dir, log)
    if state is not None:
        loop.resume(state)
        log(f"teacher: resumed at step {loop.state.step}/{cfg.teacher_steps}")
    else:                                  # a fresh start logs afresh (no record of an earlier start is kept)
        loop.records.unlink(missing_ok=True)
    loop.train()
    return model.eval()


def _usable_checkpoint(run_dir, log) -> Optional[dict]:
    """The newest whole teacher checkpoint, or None (the teacher then starts over). A checkpoint of
    an earlier wml (its own loop: other keys), or none whole (a kill inside the step-0 write leaves
    only part of one), is removed with a warning rather than blocking every resume."""
    if not checkpoint.exists(run_dir, checkpoint.TEACHER):
        return None
    try:
        state = checkpoint.load(run_dir, checkpoint.TEACHER, warn=log)
    except checkpoint.CheckpointError as exc:
        checkpoint.remove(run_dir, checkpoint.TEACHER)
        log(f"warning: the teacher's training starts over: {exc}")
        return None
    if "peers" not in state:
        checkpoint.remove(run_dir, checkpoint.TEACHER)
        log("warning: the teacher's checkpoint is from an earlier wml and cannot be resumed; its training starts over")
        return None
    return state
