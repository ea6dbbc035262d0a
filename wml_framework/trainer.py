"""The bi-level WML training loop (method.md §3–§5), readable top to bottom.

Inner step: every peer takes one AdamW step on the loss plugin's Σ_i L_i, accumulated over
``num_batches`` micro-batches. Outer step (every ``outer_every`` steps): the updater plugin
moves ω using a train batch and a batch of the ω half of the held-out split. Evaluation on fixed
blocks of the other half drives early stopping. Every step is logged to ``metrics.jsonl`` and
announced as an event (observers, callbacks); a checkpoint makes runs resumable.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import checkpoint, interrupts
from .api import Batch, Event, OuterContext, peer_logits
from .atomic import append_jsonl, atomic_write_text
from .callbacks import TrainerControl, dispatch
from .config import WMLConfig
from .heldout import heldout_losses
from .guards import NonFiniteOmega
from .plugins import PluginHost
from .run_layout import RunLayout
from .schedules import warmup_cosine
from .tokens import TokenData


class TrainingError(RuntimeError):
    """Training cannot go on (a peer keeps producing non-finite values); says which peer and step."""


@dataclass
class TrainState:
    """Everything that changes during training and must survive a resume."""

    step: int = 0
    tokens: int = 0
    omega: torch.Tensor = None
    best_val: float = math.inf
    bad_evals: int = 0
    stopped_early: bool = False
    nonfinite: list = field(default_factory=list)   # per peer: consecutive steps skipped for NaN/inf


def finite_or_none(values) -> list:
    """A list of floats for a JSON record, with None where a value is NaN or infinite (strict JSON)."""
    return [float(v) if math.isfinite(v) else None for v in values]


def autocast_for(device: torch.device, bf16: bool):
    """A factory of fresh autocast contexts: bf16 on CUDA when asked, otherwise none.

    Why a factory: an ``autocast`` object stores the state it replaced on itself, so entering
    one object twice (nested) restores the wrong state on exit and leaves bf16 on for good."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


class TrainingLoop:
    """Owns the peers, their optimizers, the loss and the updater for one run."""

    def __init__(self, cfg: WMLConfig, host: PluginHost, peers: list, data: TokenData, run_dir: Path,
                 device: torch.device, *, loss, updater, teacher=None, log=print, callbacks: Sequence = ()):
        self.cfg, self.host, self.peers, self.data = cfg, host, peers, data
        self.layout, self.device, self.teacher, self.log = RunLayout(run_dir), device, teacher, log
        self.loss, self.updater, self.callbacks = loss, updater, list(callbacks)
        if getattr(self.loss, "needs_teacher", False) and teacher is None:
            raise ValueError(f"loss {cfg.loss!r} needs a teacher, and none is loaded")
        for p in self.peers:
            p.to(device).train()
        self.optimizers = [self._adamw(p) for p in self.peers]
        self.state = TrainState(omega=self.updater.initial_omega().to(torch.float64), nonfinite=[0] * len(peers))
        self.control = TrainerControl()
        self._noted: set[str] = set()
        self.gen_train = torch.Generator().manual_seed(cfg.seed + 11)
        self.gen_outer = torch.Generator().manual_seed(cfg.seed + 12)
        self.autocast = autocast_for(device, cfg.bf16)
        self.teacher_val = self._heldout([teacher])["losses"][0] if teacher is not None else None

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    def _adamw(self, model):
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.learning_rate, betas=(self.cfg.beta1, self.cfg.beta2))

    # -- one optimizer step of every peer --------------------------------------------------
    def lr(self, step: int) -> float:
        c = self.cfg
        return warmup_cosine(step, c.learning_rate, c.min_lr, c.warmup_iters, c.lr_decay_iters)

    def _teacher_logits(self, x):
        if not getattr(self.loss, "needs_teacher", False):
            return None
        with torch.no_grad(), self.autocast():
            return peer_logits(self.teacher, x)

    def inner_step(self) -> tuple[dict, Batch]:
        c, st = self.cfg, self.state
        lr = self.lr(st.step)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        omega = st.omega.to(self.device, torch.float32)
        M = len(self.peers)
        sums = torch.zeros(3, M, device=self.device)           # CE, KL, loss; read back once a step
        for _ in range(c.num_batches):
            x, y = self.data.batch("train", c.batch_size, c.block_size, self.gen_train)
            x, y = x.to(self.device), y.to(self.device)
            teacher_logits = self._teacher_logits(x)
            with self.autocast():
                logits = [peer_logits(p, x) for p in self.peers]
                out = self.loss(logits, y, omega, teacher_logits=teacher_logits)
            (out.total / c.num_batches).backward()
            sums += torch.stack([out.ce.detach(), out.kl.detach(), out.per_peer.detach()]).float()
        means = (sums / c.num_batches).cpu()
        skipped = self._optimizer_steps(means[2])
        st.tokens += c.num_batches * c.batch_size * c.block_size
        record = {"kind": "train", "step": st.step + 1, "tokens": st.tokens, "lr": lr,
                  "ce": finite_or_none(means[0].tolist()), "kl": finite_or_none(means[1].tolist()),
                  "loss": finite_or_none(means[2].tolist()), "omega": st.omega.tolist(), "skipped": skipped}
        return record, Batch(x, y)

    def _optimizer_steps(self, losses: torch.Tensor) -> list[int]:
        """Clip and step every peer whose loss and gradient are finite; skip the others (their
        weights and AdamW state stay as they were) and stop the run when one keeps failing."""
        c, st = self.cfg, self.state
        skipped = []
        for i, (peer, opt) in enumerate(zip(self.peers, self.optimizers)):
            grads = [p.grad for p in peer.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not (math.isfinite(float(losses[i])) and math.isfinite(float(norm))):
                skipped.append(i)
                st.nonfinite[i] += 1
                opt.zero_grad(set_to_none=True)
                if st.nonfinite[i] >= c.nonfinite_patience:
                    raise TrainingError(
                        f"peer_{i} produced a non-finite loss or gradient in {st.nonfinite[i]} consecutive steps "
                        f"(the last at step {st.step + 1}); stopping. The checkpoints before it are intact: lower "
                        f"learning_rate (or raise grad_clip protection) and start again, or resume to retry.")
                continue
            st.nonfinite[i] = 0
            if c.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(peer.parameters(), c.grad_clip, norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return skipped

    # -- one ω update on held-out data -------------------------------------------------------
    def outer_step(self, train_batch: Batch) -> dict:
        c, st = self.cfg, self.state
        vx, vy = self.data.batch("val", c.batch_size, c.block_size, self.gen_outer)
        ctx = OuterContext(peers=self.peers, loss=self.loss, omega=st.omega.clone(), train=train_batch,
                           val=Batch(vx.to(self.device), vy.to(self.device)), inner_lr=self.lr(st.step),
                           outer_step=st.step // c.outer_every, teacher_logits=self._teacher_logits(train_batch.inputs))
        try:
            result = self.updater.step(ctx)
        except NonFiniteOmega as exc:
            for p in self.peers:
                p.zero_grad(set_to_none=True)
            self.log(f"warning: step {st.step + 1}: outer step skipped, ω kept: {exc.problem}")
            return {"kind": "outer", "step": st.step + 1, "omega": st.omega.tolist(), "eta": 0.0, "grad": None,
                    "val_loss": None, "info": {}, "skipped": exc.problem}
        for note in getattr(self.updater, "notes", []):
            if note not in self._noted:
                self._noted.add(note)
                self.log(f"warning: {note}")
        for p in self.peers:
            p.zero_grad(set_to_none=True)
        st.omega = result.omega.detach().to("cpu", torch.float64)
        grad = None if result.grad is None else finite_or_none(result.grad.detach().cpu().tolist())
        return {"kind": "outer", "step": st.step + 1, "omega": st.omega.tolist(), "eta": float(result.eta),
                "grad": grad, "val_loss": result.val_loss, "info": dict(result.info), "skipped": None}

    # -- evaluation on the fixed blocks of the evaluated half ------------------------------------
    def _heldout(self, models: list, omega=None) -> dict:
        c = self.cfg
        return heldout_losses(models, self.data.val_eval, c.block_size, c.batch_size,
                              max_blocks=c.eval_batches * c.batch_size, omega=omega, device=self.device,
                              autocast=self.autocast)

    def evaluate(self) -> dict:
        out = self._heldout(self.peers, omega=self.state.omega)
        ens = out["ensemble"] if math.isfinite(out["ensemble"]) else None
        return {"kind": "eval", "step": self.state.step, "val_loss": finite_or_none(out["losses"]),
                "ensemble_val_loss": ens, "teacher_val_loss": self.teacher_val}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        st = self.state
        return {
            "step": st.step, "tokens": st.tokens, "omega": st.omega, "best_val": st.best_val,
            "bad_evals": st.bad_evals, "stopped_early": st.stopped_early, "nonfinite": list(st.nonfinite),
            "peer_configs": [p.config.to_dict() for p in self.peers],
            "peers": [p.state_dict() for p in self.peers],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "updater": self.updater.state_dict(),
            "gen_train": self.gen_train.get_state(), "gen_outer": self.gen_outer.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, s: dict) -> None:
        for p, sd in zip(self.peers, s["peers"]):
            p.load_state_dict(sd)
        for o, sd in zip(self.optimizers, s["optimizers"]):
            o.load_state_dict(sd)
        self.updater.load_state_dict(s["updater"])
        self.gen_train.set_state(s["gen_train"])
        self.gen_outer.set_state(s["gen_outer"])
        torch.set_rng_state(s["torch_rng"])
        if s.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])  # dropout masks on the GPU resume identically
        self.state = TrainState(step=s["step"], tokens=s["tokens"], omega=s["omega"], best_val=s["best_val"],
                                bad_evals=s["bad_evals"], stopped_early=s["stopped_early"],
                                nonfinite=list(s.get("nonfinite", [0] * len(self.peers))))

    def save_checkpoint(self) -> None:
        with interrupts.deferred():   # a signal during the write waits for it to finish
            checkpoint.save(self.run_dir, self.state_dict())
        self._saved_at = self.state.step
        self._emit(Event.CHECKPOINT, {"step": self.state.step})

    # -- the loop --------------------------------------------------------------------------------
    def _emit(self, event: Event, payload: dict) -> None:
        self.host.emit(event, {**payload, "run_dir": str(self.run_dir), "total_steps": self.cfg.max_steps})
        dispatch(self.callbacks, event, payload, self.state, self.control)

    def _log(self, record: dict) -> None:
        append_jsonl(self.layout.metrics, record)
        self._emit(Event(record["kind"]), record)

    def _early_stop(self, ev: dict) -> bool:
        st, c = self.state, self.cfg
        if ev["ensemble_val_loss"] is not None and ev["ensemble_val_loss"] < st.best_val - 1e-4:
            st.best_val, st.bad_evals = ev["ensemble_val_loss"], 0
        else:
            st.bad_evals += 1
        return c.enable_early_stopping and st.bad_evals >= c.early_stopping_patience

    def _evaluate_and_log(self) -> None:
        ev = self.evaluate()
        self._log(ev)
        self.state.stopped_early = self._early_stop(ev)

    def train(self) -> TrainState:
        """Steps until ``max_steps``, early stopping or a callback's stop. A signal (SIGINT, SIGTERM,
        SIGUSR1) lets the current step finish, writes a checkpoint, then raises ``Interrupted``."""
        c, st, ctl = self.cfg, self.state, self.control
        self._saved_at = None
        with interrupts.handling():
            self._emit(Event.RUN_START, {"step": st.step, "num_peers": len(self.peers)})
            if st.step == 0:
                with interrupts.deferred():
                    self._log(self.evaluate())
                    self.save_checkpoint()  # from here on the run resumes instead of rebuilding its peers
                self._stop_if_signalled()
            while st.step < c.max_steps and not st.stopped_early and not ctl.should_stop:
                with interrupts.deferred():
                    self._step()
                self._stop_if_signalled()
            self._emit(Event.RUN_END, {"step": st.step, "stopped_early": st.stopped_early,
                                       "stopped_by_callback": ctl.should_stop})
        return st

    def _step(self) -> None:
        c, st, ctl = self.cfg, self.state, self.control
        t0 = time.perf_counter()
        record, last_batch = self.inner_step()
        outer = None
        if self.updater.needs_validation and (st.step + 1) % c.outer_every == 0:
            outer = self.outer_step(last_batch)
        record["tokens_per_s"] = c.num_batches * c.batch_size * c.block_size / (time.perf_counter() - t0)
        st.step += 1
        self._log(record)
        if outer is not None:
            self._log(outer)
        if st.step % c.eval_interval == 0 or st.step == c.max_steps or ctl.should_evaluate:
            ctl.should_evaluate = False
            self._evaluate_and_log()
        if (st.step % c.checkpoint_interval == 0 or st.step == c.max_steps or st.stopped_early
                or ctl.should_save or ctl.should_stop):
            ctl.should_save = False
            self.save_checkpoint()

    def _stop_if_signalled(self) -> None:
        if interrupts.pending() is not None:
            if self._saved_at != self.state.step:
                self.save_checkpoint()
            interrupts.raise_pending(self.state.step)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after the checkpoint a resumed run restarts from."""
    path = RunLayout(run_dir).metrics
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))
