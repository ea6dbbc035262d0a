"""The end of a run: every peer and the champion as standard Hugging Face folders, and
``summary.json`` with each peer's shape, held-out loss and ω (what ``wml run`` prints last).

Two ensembles are reported: with the ω that trained the peers (``omega``) and with the fitted ω
(``fitted_omega``), the exact minimiser of the ensemble's loss on the ω half, found once the peers
are final (:mod:`~..evaluation.omega_fit`); both are evaluated on the evaluated half."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch

from ..evaluation.diversity import PairwiseJS, diversity_record
from ..evaluation.heldout import OBJECTIVE_ATTR, OBJECTIVE_OPTIONS_ATTR
from ..evaluation.omega_fit import fit_omega
from ..evaluation.pseudo_likelihood import CONFIG_ATTR as SCORING_ATTR
from ..runtime import distributed
from ..runtime.atomic import atomic_directory, atomic_write_json
from ..runtime.run_layout import RunLayout, peer_name
from ..text.tokenizer import bos_token_id
from ..text.tokens import TokenData
from .families import shape_of
from .loop import TrainingLoop
from .records import finite_or_none
from .transformers4 import write_for_transformers4
from .word_budget import WordBudget

__all__ = ["SCORING_ATTR", "export", "fit_for", "print_summary", "save_model", "stamp_objective", "weights_fingerprint"]

def stamp_objective(model, name: str, options: dict, objective) -> None:
    """Write into the model's config the objective it was trained with (name, options, and the
    minimal-pair scoring that fits it), so that ``wml eval`` of the folder scores it as trained:
    a masked model by its masked-token loss and pseudo-log-likelihood, a hybrid one by MNTP."""
    setattr(model.config, OBJECTIVE_ATTR, name)
    setattr(model.config, OBJECTIVE_OPTIONS_ATTR, dict(options))
    setattr(model.config, SCORING_ATTR, objective.scoring)


def save_model(model, tokenizer, path: Path) -> None:
    """A Hugging Face folder the BabyLM pipeline loads as it is, under the transformers 4 it pins as
    under 5 (:mod:`.transformers4`): the tokenizer defines BOS, EOS and PAD (PAD is EOS when it has
    none), and the model's config carries their ids (sequence classification needs ``pad_token_id``
    to batch sentences of different lengths)."""
    from transformers.utils import logging as hf_logging

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.bos_token_id = bos_token_id(tokenizer)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.generation_config, key, getattr(model.config, key))
    hf_logging.disable_progress_bar()  # our own progress display is enough
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_for_transformers4(tmp)


def export(loop: TrainingLoop, data: TokenData, run_dir: Path, elapsed: float, extra: Optional[dict] = None) -> dict:
    """Every peer and the champion as standard HF folders, and ``summary.json`` (with ``extra``'s
    entries: what the runner knows beyond the loop, such as the teacher's words)."""
    layout = RunLayout(run_dir)
    js = PairwiseJS(len(loop.peers))
    final = loop.evaluate(observe=js)            # every rank: the held-out blocks are shared out
    fitted = fit_for(loop, data)                 # before the peers move to the CPU to be saved
    fitted_final = loop.score_heldout(loop.peers, omega=fitted.omega)
    main = distributed.current().is_main
    omega = loop.state.omega.tolist()
    peers = []
    name = loop.cfg.objective
    for i, peer in enumerate(loop.peers):
        if main:
            stamp_objective(peer, name, loop.cfg.plugin_options(name), loop.objective)
            save_model(peer.cpu(), data.tokenizer, layout.peer(i))
        peers.append({"name": peer_name(i), "parameters": sum(p.numel() for p in peer.parameters()),
                      "shape": shape_of(loop.host, peer.config), "val_loss": final["val_loss"][i], "omega": omega[i]})
    best = min(range(len(peers)), key=lambda i: peers[i]["val_loss"])
    if main:
        with atomic_directory(layout.champion) as tmp:
            for f in layout.peer(best).iterdir():
                shutil.copy2(f, tmp / f.name)
    teacher = loop.teacher
    cfg = loop.cfg.to_dict()
    summary = {
        "peers": peers, "omega": omega, "ensemble_val_loss": final["ensemble_val_loss"],
        # how alike the peers are and what their ensemble gains, on the same blocks (evaluation/diversity.py)
        "diversity": diversity_record(js, final["val_loss"], final["ensemble_val_loss"], [p["name"] for p in peers],
                                      reduce_sum=loop.dist.sum_floats),
        # the exported ensemble's ω, fitted on the ω half at the end (not the ω that trained the peers)
        "fitted_omega": fitted.omega.tolist(), "fitted_ensemble_val_loss": finite_or_none([fitted_final["ensemble"]])[0],
        "ensemble_omega_half_loss": fitted.start_loss, "fitted_ensemble_omega_half_loss": fitted.loss,
        "omega_fit": {k: v for k, v in fitted.as_dict().items() if k in ("peer_losses", "blocks", "tokens", "solver")},
        "champion": peers[best]["name"], "steps": loop.state.step, "tokens": loop.state.tokens,
        "words": {"peers": loop.state.words},
        "stopped_early": loop.state.stopped_early, "elapsed_s": round(elapsed, 1),
        # run observers that raised and were not called again (the training itself is unaffected)
        "observer_failures": [{k: f[k] for k in ("plugin", "event", "step", "error")}
                              for f in loop.host.observer_failures(run_dir)],
        "config": {k: cfg[k] for k in ("init", "updater", "loss", "hypergradient", "objective")},
        "measure": loop.objective.loss_name,
        "teacher": None if teacher is None else {
            "parameters": sum(p.numel() for p in teacher.parameters()), "val_loss": loop.teacher_val,
            "shape": shape_of(loop.host, teacher.config)},
    }
    summary.update(extra or {})
    if main:
        atomic_write_json(layout.summary, summary)
    return summary


def fit_for(loop: TrainingLoop, data: TokenData):
    """The fitted ω of the loop's final peers: on the ω half's evaluation-style blocks (as many as
    the evaluated half's, ``eval_batches × batch_size``), starting from the trained ω. Every process
    of a data-parallel run fits alike, on the same blocks, and so gets the same ω."""
    c = loop.cfg
    return fit_omega(loop.peers, data.val_omega, c.block_size, c.batch_size, c.eval_batches * c.batch_size,
                     start=loop.state.omega.tolist(), device=loop.device, autocast=loop.autocast,
                     objective=loop.objective, tokens_info=loop.tokens)


def weights_fingerprint(model) -> str:
    """SHA-256 of a model's tensors (names, dtypes, shapes, bytes): runs that start from the same
    weights say so (``init_trace.json``), which ``wml compare`` checks across its methods."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _weights(w) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in w) + "]"


def print_summary(summary: dict, log) -> None:
    log("")
    measure = summary.get("measure") or "held-out loss"
    width = max(14, len(measure))
    log(f"{'model':<10} {'params':>10} {'ω':>7} {measure:>{width}}")
    t = summary["teacher"]
    if t:
        log(f"{'teacher':<10} {t['parameters']:>10,} {'':>7} {t['val_loss']:>{width}.4f}")
    for p in summary["peers"]:
        mark = "  ← champion" if p["name"] == summary["champion"] else ""
        log(f"{p['name']:<10} {p['parameters']:>10,} {p['omega']:>7.3f} {p['val_loss']:>{width}.4f}{mark}")
    log(f"{'ensemble':<10} {'':>10} {'':>7} {summary['ensemble_val_loss']:>{width}.4f}  (trained ω)")
    if summary.get("fitted_ensemble_val_loss") is not None:
        log(f"{'ensemble':<10} {'':>10} {'':>7} {summary['fitted_ensemble_val_loss']:>{width}.4f}  (fitted ω)")
    best_single = min(p["val_loss"] for p in summary["peers"])
    ens, best = f"{summary['ensemble_val_loss']:.4f}", f"{best_single:.4f}"
    # compared as printed: values that print alike are called equal, never "below" or "NOT below"
    verdict = ("equal to the best single peer's" if ens == best else
               "below every single peer's" if summary["ensemble_val_loss"] < best_single else "NOT below every single peer's")
    log(f"ensemble {'held-out loss' if measure == 'held-out loss' else 'held-out ' + measure} is {verdict} "
        f"({ens} vs best {best})")
    js = (summary.get("diversity") or {}).get("js")
    if js is not None:
        log(f"peers' diversity: mean pairwise Jensen–Shannon divergence {js:.4f} nats (0: alike; ln 2 ≈ 0.693 at most)")
    words = summary.get("words") or {}
    if "total" in words:
        log(WordBudget(words["track"], words["teacher"], words["peers"], len(summary["peers"])).line())
    if summary.get("fitted_omega") is not None:
        fit = summary.get("omega_fit") or {}
        best_half = min(fit.get("peer_losses") or [float("nan")])
        log(f"fitted ω {_weights(summary['fitted_omega'])} (trained ω {_weights(summary['omega'])}); on the ω half "
            f"{summary['fitted_ensemble_omega_half_loss']:.4f} vs trained {summary['ensemble_omega_half_loss']:.4f}, "
            f"best peer {best_half:.4f}; `wml eval` scores the fitted ensemble (--omega trained for the other)")
    uniform = 1.0 / len(summary["omega"])
    log(f"ω moved from uniform by {max(abs(w - uniform) for w in summary['omega']):.4f} (max |ω_i − 1/M|)")
    for f in summary.get("observer_failures", []):
        at = f" at step {f['step']}" if f.get("step") is not None else ""
        log(f"warning: the run observer {f['plugin']!r} heard nothing after it failed on event {f['event']!r}{at} "
            f"({f['error']}); the training and its outputs are complete")
