"""``wml run`` end to end: data, teacher, peers, training, export, evaluation, report.

Each stage leaves its result in the run folder before the next starts (config, teacher,
a step-0 checkpoint, metrics, peers), so ``resume`` can pick up wherever a run stopped.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import torch

from . import checkpoint
from . import config as cfgmod
from .api import Batch, peer_targets
from .config import WMLConfig
from .data import TokenData, prepare
from .io import atomic_directory, atomic_write_json
from .plugins import PluginHost, get_host
from .teacher import check_teacher_dir, family_for, load_teacher, new_teacher, train_teacher
from .trainer import Trainer, pick_device, truncate_metrics


MIN_POSITIONS = 256  # a trained teacher (and its peers) can score evaluation sentences longer than a block


class RunError(ValueError):
    """A run that cannot start or resume; says why."""


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _save_model(model, tokenizer, path: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _prepare_teacher(cfg: WMLConfig, run_dir: Path, host: PluginHost, device, log):
    """The teacher model and the token data, training a teacher when none was given."""
    saved = run_dir / "teacher"
    if (saved / "config.json").exists():
        teacher, tokenizer = load_teacher(saved)
        return teacher, prepare(cfg.corpus, cfg.vocab_size, cfg.val_fraction, tokenizer=tokenizer, log=log)
    if cfg.teacher:
        teacher, tokenizer = load_teacher(cfg.teacher)
        if tokenizer is None:
            raise RunError(f"teacher {cfg.teacher!r} has no tokenizer files; save its tokenizer beside the model")
        limit = getattr(teacher.config, "max_position_embeddings", None) or getattr(teacher.config, "n_positions", None)
        if limit is not None and cfg.block_size > limit:
            raise RunError(f"config key 'block_size': value {cfg.block_size} is not allowed with teacher {cfg.teacher!r}; "
                           f"expected at most its {limit} positions")
        from .scoring import with_bos

        tokenizer = with_bos(tokenizer)  # exported peers then score the first word in the BabyLM pipeline too
        data = prepare(cfg.corpus, cfg.vocab_size, cfg.val_fraction, tokenizer=tokenizer, log=log)
    else:
        data = prepare(cfg.corpus, cfg.vocab_size, cfg.val_fraction, log=log)
        family = host.create("family", cfg.teacher_family)
        teacher = new_teacher(family, cfg, data.tokenizer, max_positions=max(cfg.block_size, MIN_POSITIONS))
        n = sum(p.numel() for p in teacher.parameters())
        log(f"teacher: training a {cfg.teacher_family} teacher of {n:,} parameters for {cfg.teacher_steps} steps")
        teacher = train_teacher(teacher, data, cfg, device, log=log)
    _save_model(teacher.cpu(), data.tokenizer, saved)
    return teacher.to(device).eval(), data


def _build_peers(cfg: WMLConfig, host: PluginHost, teacher, data: TokenData, run_dir: Path, log):
    family = family_for(host, teacher.config)
    n_teacher = family.count_parameters(teacher.config)
    targets = peer_targets(n_teacher, None if cfg.peer_fractions else cfg.num_peers, cfg.peer_fractions or None)
    log(f"peers: {cfg.init} initialization of {len(targets)} peers, targets {targets} (teacher {n_teacher:,})")
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    x, y = data.batch("train", cfg.batch_size, cfg.block_size, gen)
    initializer = host.create("initializer", cfg.init, cfg)
    t0 = time.time()
    device = next(teacher.parameters()).device
    result = initializer.build(teacher.cpu(), family, targets, calibration=Batch(x, y), seed=cfg.seed)
    teacher.to(device)  # .cpu() moved it in place; training and evaluation need it back
    atomic_write_json(run_dir / "init_table.json", result.rows)
    atomic_write_json(run_dir / "init_trace.json", result.trace)
    for row in result.rows:
        log(f"  {row['peer']}: {row['shape']}  {row['parameters']:,} params (target {row['target']:,}, "
            f"error {100 * row['rel_error']:.2f}%)")
    log(f"peers: built in {time.time() - t0:.1f}s")
    return result.peers


def _peers_from_checkpoint(state: dict) -> list:
    from transformers import AutoConfig, AutoModelForCausalLM

    peers = []
    for conf in state["peer_configs"]:
        hf_config = AutoConfig.for_model(**conf)
        peers.append(AutoModelForCausalLM.from_config(hf_config))
    return peers


def start(cfg: WMLConfig, out_dir: str | Path | None = None, log=print) -> Path:
    """Begin a new run in ``out_dir`` (which must not already hold one)."""
    run_dir = Path(out_dir) if out_dir else default_run_dir()
    if (run_dir / "config.toml").exists():
        raise RunError(f"{str(run_dir)!r} already holds a run; continue it with --resume {run_dir}")
    if cfg.teacher:
        check_teacher_dir(cfg.teacher)
    pick_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfgmod.save(cfg, run_dir / "config.toml")
    log(f"run folder: {run_dir}")
    return _execute(cfg, run_dir, log)


def resume(run_dir: str | Path, log=print) -> Path:
    """Continue an interrupted run from its last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").exists():
        raise RunError(f"{str(run_dir)!r} is not a run folder (no config.toml)")
    cfg = cfgmod.load(run_dir / "config.toml")
    log(f"resuming {run_dir}")
    return _execute(cfg, run_dir, log)


def _execute(cfg: WMLConfig, run_dir: Path, log) -> Path:
    host = get_host()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    t_start = time.time()
    teacher, data = _prepare_teacher(cfg, run_dir, host, device, log)
    if checkpoint.exists(run_dir):
        state = checkpoint.load(run_dir)
        peers = _peers_from_checkpoint(state)
        trainer = Trainer(cfg, host, peers, data, run_dir, device, teacher=teacher, log=log)
        trainer.load_state_dict(state)
        if trainer.state.step == 0:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # the step-0 evaluation is logged again
        else:
            truncate_metrics(run_dir, trainer.state.step)
        log(f"resumed at step {trainer.state.step}/{cfg.num_epochs}")
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        peers = _build_peers(cfg, host, teacher, data, run_dir, log)
        trainer = Trainer(cfg, host, peers, data, run_dir, device, teacher=teacher, log=log)
        trainer.save_checkpoint()
    state = trainer.train()
    summary = export(trainer, data, run_dir, elapsed=time.time() - t_start)
    _print_summary(summary, log)
    from .finish import finish_run  # evaluation and report: after the peers are safely on disk

    finish_run(run_dir, cfg, log=log)
    return run_dir


def export(trainer: Trainer, data: TokenData, run_dir: Path, elapsed: float) -> dict:
    """Every peer and the champion as standard HF folders, and ``summary.json``."""
    final = trainer.evaluate()
    omega = trainer.state.omega.tolist()
    peers = []
    for i, peer in enumerate(trainer.peers):
        name = f"peer_{i}"
        _save_model(peer.cpu(), data.tokenizer, run_dir / "peers" / name)
        peers.append({"name": name, "parameters": sum(p.numel() for p in peer.parameters()),
                      "shape": _shape(trainer.host, peer.config), "val_loss": final["val_loss"][i], "omega": omega[i]})
    best = min(range(len(peers)), key=lambda i: peers[i]["val_loss"])
    with atomic_directory(run_dir / "champion") as tmp:
        for f in (run_dir / "peers" / peers[best]["name"]).iterdir():
            shutil.copy2(f, tmp / f.name)
    teacher = trainer.teacher
    summary = {
        "peers": peers, "omega": omega, "ensemble_val_loss": final["ensemble_val_loss"],
        "champion": peers[best]["name"], "steps": trainer.state.step, "tokens": trainer.state.tokens,
        "stopped_early": trainer.state.stopped_early, "elapsed_s": round(elapsed, 1),
        "config": {k: trainer.cfg.to_dict()[k] for k in ("init", "updater", "loss", "hypergradient")},
        "teacher": None if teacher is None else {
            "parameters": sum(p.numel() for p in teacher.parameters()), "val_loss": trainer.teacher_val,
            "shape": _shape(trainer.host, teacher.config)},
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _shape(host: PluginHost, hf_config) -> str:
    s = family_for(host, hf_config).shape(hf_config)
    return f"L{s['n_layer']}·H{s['n_head']}·d{s['head_dim']}·F{s['ffn']}"


def _print_summary(summary: dict, log) -> None:
    log("")
    log(f"{'model':<10} {'params':>10} {'ω':>7} {'held-out loss':>14}")
    t = summary["teacher"]
    if t:
        log(f"{'teacher':<10} {t['parameters']:>10,} {'':>7} {t['val_loss']:>14.4f}")
    for p in summary["peers"]:
        mark = "  ← champion" if p["name"] == summary["champion"] else ""
        log(f"{p['name']:<10} {p['parameters']:>10,} {p['omega']:>7.3f} {p['val_loss']:>14.4f}{mark}")
    log(f"{'ensemble':<10} {'':>10} {'':>7} {summary['ensemble_val_loss']:>14.4f}")
    best_single = min(p["val_loss"] for p in summary["peers"])
    verdict = "below" if summary["ensemble_val_loss"] < best_single else "NOT below"
    log(f"ensemble held-out loss is {verdict} every single peer's ({summary['ensemble_val_loss']:.4f} vs best {best_single:.4f})")
    uniform = 1.0 / len(summary["omega"])
    log(f"ω moved from uniform by {max(abs(w - uniform) for w in summary['omega']):.4f} (max |ω_i − 1/M|)")
