"""The teacher: a Hugging Face causal LM loaded from a folder, or a small one trained first."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import WMLConfig
from ..plugin_system.host import PluginHost
from .schedules import warmup_cosine
from ..text.tokens import TokenData

__all__ = ["WEIGHT_PATTERNS", "TeacherError", "check_teacher_dir", "load_teacher_config", "load_teacher",
           "teacher_config", "new_teacher", "train_teacher"]

#: files any one of which holds a Hugging Face model's weights
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    p = check_teacher_dir(path)
    quiet = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # its load report is ours to give, in one line
    try:
        model, info = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if "mismatched" in str(exc):
            raise TeacherError(f"teacher {str(p)!r}: its weights do not match its config.json (tensor shapes differ)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"teacher {str(p)!r} cannot be loaded as a causal LM: {first}") from None
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
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)


def train_teacher(model, data: TokenData, cfg: WMLConfig, device: torch.device, log=print, run_dir=None):
    """Plain next-token training (AdamW, warm-up + cosine), the same recipe as the peers.

    With ``run_dir``, a checkpoint is written every ``checkpoint_interval`` steps and training
    resumes from the newest whole one, bit for bit; a signal finishes the step, writes a checkpoint
    and stops (see :mod:`wml_framework.runtime.interrupts`)."""
    from ..runtime import checkpoint, interrupts
    from ..runtime.threads import ThreadGovernor
    from .loop import _restoring_threads, autocast_for

    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.teacher_learning_rate, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay, fused=True)
    autocast, threads = autocast_for(device, cfg.bf16), ThreadGovernor(cfg.threads, device.type)
    threads_before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    steps, start = cfg.teacher_steps, 0
    if run_dir is not None and checkpoint.exists(run_dir, checkpoint.TEACHER):
        state = checkpoint.load(run_dir, checkpoint.TEACHER, warn=log)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        log(f"teacher: resumed at step {start}/{steps}")

    def save(step: int) -> None:
        if run_dir is not None:
            with interrupts.deferred():
                checkpoint.save(run_dir, {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                          "gen": gen.get_state(), "torch_rng": torch.get_rng_state()},
                                kind=checkpoint.TEACHER)

    warmup = min(cfg.warmup_iters, steps // 10)
    t0, report_every = time.time(), max(1, steps // 10)
    saved = start
    with interrupts.handling(), _restoring_threads(threads_before):
        for step in range(start, steps):
            with interrupts.deferred():
                threads.before_step()
                started = time.perf_counter()
                lr = warmup_cosine(step, cfg.teacher_learning_rate, cfg.teacher_learning_rate / 10, warmup, steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                x, y = data.batch("train", cfg.batch_size, cfg.block_size, gen)
                with autocast():
                    logits = model(input_ids=x.to(device)).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                threads.after_step(time.perf_counter() - started)
                if (step + 1) % report_every == 0 or step + 1 == steps:
                    log(f"teacher: step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
                if (step + 1) % cfg.checkpoint_interval == 0 and step + 1 < steps:
                    save(step + 1)
                    saved = step + 1
            if interrupts.pending() is not None:
                if saved != step + 1:
                    save(step + 1)
                interrupts.raise_pending()
    return model.eval()
