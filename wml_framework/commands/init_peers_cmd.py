"""``wml init-peers``: build M peers from a teacher with an initializer plugin and save them.

Writes ``OUT/peer_<i>/`` (Hugging Face ``save_pretrained``, safetensors, plus the teacher's
tokenizer when it has one), ``OUT/init_table.json`` (one row per peer: peer, shape,
parameters, target, rel_error), ``OUT/init_trace.json`` (every search probe or pruning
decision) and ``OUT/init_config.toml``. Everything that can be checked from the teacher's
config (family, targets, plugin settings) is checked before the weights are loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import config as cfgmod
from ..cli_types import plugin_option
from ..io import atomic_directory, atomic_write_json
from ..plugins import PluginError, get_host
from ..api import peer_targets  # the N/2 … N/(M+1) rule of method.md §1

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_teacher_config(teacher: Path):
    """The teacher's HF config, or a UsageError saying why the folder is not a model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(teacher))
    except Exception as exc:  # noqa: BLE001 - any failure means: not a model folder
        raise click.UsageError(f"teacher {str(teacher)!r} is not a Hugging Face model directory "
                               f"(its config.json cannot be loaded: {exc})") from None
    if not any((teacher / name).is_file() for name in WEIGHT_FILES):
        raise click.UsageError(f"teacher {str(teacher)!r} has a config but no weights "
                               f"(expected one of {', '.join(WEIGHT_FILES)})")
    return config


def family_for(config):
    """The registered family whose ``model_type`` is the teacher's."""
    host = get_host()
    for name in host.names("family"):
        family = host.create("family", name)
        if family.model_type == getattr(config, "model_type", None):
            return family
    raise click.UsageError(f"no registered model family handles model_type {getattr(config, 'model_type', None)!r}; "
                           f"registered families: {', '.join(host.names('family'))}")


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


def save_peers(out: Path, peers, teacher: Path) -> None:
    """Each peer in its own folder, written atomically, with the teacher's tokenizer if any."""
    tokenizer = None
    if any((teacher / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(teacher))
        except Exception as exc:  # noqa: BLE001 - peers are still usable without it
            click.echo(f"warning: the teacher's tokenizer cannot be loaded ({exc}); "
                       "peers are saved without one", err=True)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.glob("peer_*")
                   if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) >= len(peers))
    if stale:
        click.echo(f"warning: {out} still holds {', '.join(stale)} from an earlier run (not in this table)", err=True)
    for i, peer in enumerate(peers):
        with atomic_directory(out / f"peer_{i}") as tmp:
            peer.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))


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
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file for prune_importance=taylor (tokenised with the teacher's tokenizer).")
def command(init, teacher, num_peers, out, config_path, preset, overrides, calibration) -> None:
    """Build M peers from a teacher (Bayesian sizing or structured pruning) and save them."""
    started = time.perf_counter()
    cfg = resolve_config(config_path, preset, overrides, init, num_peers)
    teacher_config = load_teacher_config(teacher)
    family = family_for(teacher_config)
    n_teacher = family.count_parameters(teacher_config)
    try:
        targets = peer_targets(n_teacher, None if cfg.peer_fractions else cfg.num_peers, cfg.peer_fractions or None)
        initializer = get_host().create("initializer", cfg.init, cfg)
        batch = calibration_batch(calibration, teacher, cfg) if calibration is not None else None
        if hasattr(initializer, "check"):   # optional: rejects impossible requests from the config alone
            initializer.check(teacher_config, family, targets, calibration=batch)
    except (ValueError, PluginError) as exc:
        raise click.UsageError(str(exc)) from None

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # per-file bars would bury the table
    click.echo(f"teacher: {family.name} {family.shape_string(teacher_config)}, {n_teacher:,} parameters; "
               f"initializer {cfg.init!r}, {len(targets)} peers", err=True)
    model = AutoModelForCausalLM.from_pretrained(str(teacher)).eval()
    loaded = sum(p.numel() for p in model.parameters())
    if loaded != n_teacher:
        raise click.ClickException(f"family {family.name!r} counts {n_teacher:,} parameters for the teacher's "
                                   f"config, but the loaded model has {loaded:,}")
    result = initializer.build(model, family, targets, calibration=batch, seed=cfg.seed)
    seconds = time.perf_counter() - started

    save_peers(out, result.peers, teacher)
    atomic_write_json(out / "init_table.json", result.rows)
    atomic_write_json(out / "init_trace.json", dict(
        initializer=cfg.init, family=family.name, teacher=str(teacher), teacher_parameters=n_teacher,
        teacher_shape=family.shape_string(teacher_config), seed=cfg.seed, seconds=round(seconds, 3),
        trace=result.trace))
    cfgmod.save(cfg, out / "init_config.toml")
    click.echo(format_table(result.rows, family.shape_string(teacher_config), n_teacher))
    click.echo(f"{len(result.peers)} peers written to {out} in {seconds:.1f} s", err=True)


def resolve_config(config_path, preset, overrides, init, num_peers) -> cfgmod.WMLConfig:
    """Defaults < preset < TOML < --set < the named options; any problem is a UsageError."""
    try:
        values = cfgmod.parse_overrides(overrides)
        if init is not None:
            values["init"] = init
        if num_peers is not None:
            values["num_peers"] = num_peers
        cfg = cfgmod.load(config_path, preset=preset, overrides=values)
    except cfgmod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if cfg.peer_fractions and num_peers is not None and num_peers != len(cfg.peer_fractions):
        raise click.UsageError(f"--peers {num_peers} disagrees with peer_fractions "
                               f"({len(cfg.peer_fractions)} fractions given)")
    return cfg
