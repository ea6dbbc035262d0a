"""``wml init-peers``: build M peers from a teacher with an initializer plugin and save them.

Writes ``OUT/peer_<i>/`` (Hugging Face ``save_pretrained``, safetensors, plus the teacher's
tokenizer when it has one), ``OUT/init_table.json``, ``OUT/init_trace.json`` and
``OUT/init_config.toml`` — the same peer-building path and files as ``wml run``. Everything that
can be checked from the teacher's config (family, targets, plugin settings) is checked before
the weights are loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import config as cfgmod
from ..api import model_class
from ..runtime.atomic import atomic_directory
from ..runtime.run_layout import peer_name
from ..training.families import family_for
from ..training.peers import build_peers, plan_peers, write_init_files
from ..training.teacher import load_teacher_config
from ..training.transformers4 import write_for_transformers4
from ._support import host, one_line_errors, plugin_option, resolve_config

__all__ = ["calibration_batch", "save_peers", "format_table", "command"]


def calibration_batch(path: Path, teacher: Path, cfg: cfgmod.WMLConfig):
    """Up to ``batch_size`` rows of ``block_size`` tokens of a text file, in the teacher's tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from ..api import Batch

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    except Exception as exc:  # noqa: BLE001
        raise click.UsageError(f"--calibration needs the teacher's tokenizer, which cannot be loaded: {exc}") from None
    ids = tokenizer(path.read_text(encoding="utf-8"))["input_ids"]
    block = min(cfg.block_size, len(ids))
    rows = min(cfg.batch_size, len(ids) // block) if block >= 2 else 0
    if rows < 1:
        raise click.UsageError(f"calibration file {str(path)!r} is too short (needs at least 2 tokens)")
    tokens = torch.tensor(ids[: rows * block]).reshape(rows, block)
    labels = torch.full_like(tokens, -100)
    labels[:, :-1] = tokens[:, 1:]
    return Batch(tokens, labels)


def _teacher_tokenizer(teacher: Path):
    """The teacher's tokenizer when its folder has one (else None, with a warning if it is broken)."""
    from transformers import AutoTokenizer

    if not any((teacher / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                         "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(teacher))
    except Exception as exc:  # noqa: BLE001 - peers are still usable without it
        click.echo(f"warning: the teacher's tokenizer cannot be loaded ({exc}); peers are saved without one", err=True)
        return None


def save_peers(out: Path, peers, teacher: Path) -> None:
    """Each peer in its own folder, written atomically, with the teacher's tokenizer if any."""
    tokenizer = _teacher_tokenizer(teacher)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.glob("peer_*")
                   if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) >= len(peers))
    if stale:
        click.echo(f"warning: {out} still holds {', '.join(stale)} from an earlier run (not in this table)", err=True)
    for i, peer in enumerate(peers):
        with atomic_directory(out / peer_name(i)) as tmp:
            peer.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            write_for_transformers4(tmp)   # the BabyLM pipeline's transformers 4 reads it as 5 does


def format_table(rows, teacher_shape: str, n_teacher: int) -> str:
    lines = [f"{'peer':<8}{'shape':<26}{'parameters':>13}{'target':>13}{'rel. error':>12}",
             f"{'teacher':<8}{teacher_shape:<26}{n_teacher:>13,}{'':>13}{'':>12}"]
    for r in rows:
        lines.append(f"{r['peer']:<8}{r['shape']:<26}{r['parameters']:>13,}{r['target']:>13,}{r['rel_error']:>11.3%}")
    return "\n".join(lines)


@click.command("init-peers")
@plugin_option("--init", "initializer", "Peer initializer (default: the config's `init`).")
@click.option("--teacher", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Hugging Face model directory of the teacher.")
@click.option("--peers", "num_peers", type=click.IntRange(min=1), help="Number of peers M (targets N/2 … N/(M+1)).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of config keys.")
@click.option("--preset", type=click.Choice(sorted(cfgmod.PRESETS)), help="Named set of config values.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key or NAME.OPTION (repeatable).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file for prune_importance=taylor (tokenised with the teacher's tokenizer).")
@one_line_errors
def command(init, teacher, num_peers, out, config_path, preset, overrides, calibration) -> None:
    """Build M peers from a teacher (Bayesian sizing or structured pruning) and save them."""
    started = time.perf_counter()
    cfg = resolve_config(config_path, preset, overrides, init=init, num_peers=num_peers)
    if cfg.peer_fractions and num_peers is not None and num_peers != len(cfg.peer_fractions):
        raise click.UsageError(f"--peers {num_peers} disagrees with peer_fractions ({len(cfg.peer_fractions)} fractions given)")
    h = host()
    teacher_config = load_teacher_config(teacher)
    family = family_for(h, teacher_config)
    initializer = h.create("initializer", cfg.init, cfg, options=cfg.plugin_options(cfg.init))
    batch = calibration_batch(calibration, teacher, cfg) if calibration is not None else None
    try:
        plan = plan_peers(cfg, initializer, family, teacher_config, batch)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # per-file bars would bury the table
    click.echo(f"teacher: {family.name} {family.shape_string(teacher_config)}, {plan.n_teacher:,} parameters; "
               f"initializer {cfg.init!r}, {len(plan.targets)} peers", err=True)
    model = model_class(teacher_config).from_pretrained(str(teacher)).eval()
    try:
        result, trace = build_peers(cfg, plan, model, calibration=batch, log=lambda m: None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    trace["teacher"] = str(teacher)
    save_peers(out, result.peers, teacher)
    write_init_files(out, result, trace)
    cfgmod.save(cfg, out / "init_config.toml")
    click.echo(format_table(result.rows, family.shape_string(teacher_config), plan.n_teacher))
    click.echo(f"{len(result.peers)} peers written to {out} in {time.perf_counter() - started:.1f} s", err=True)
