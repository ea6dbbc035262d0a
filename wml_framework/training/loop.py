"""The bi-level WML training loop (method.md §3–§5), readable top to bottom.

Inner step: every peer takes one AdamW step on the loss plugin's Σ_i L_i, accumulated over
``num_batches`` micro-batches. Outer step (every ``outer_every`` steps, after the backward and
before the optimizer step, so it describes the step taken): the updater plugin moves ω using the
last train micro-batch (with what the inner step computed on it) and a batch of the ω half of the
held-out split. Evaluation on fixed
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
from typing import Optional, Sequence

import torch

from ..runtime import checkpoint, distributed, interrupts
from .adam_precond import adam_preconditioner
from ..runtime.placement import peer_placement
from ..api import Batch, Event, InnerGradients, OuterContext, peer_logits
from .attention import eager_attention
from ..runtime.atomic import append_jsonl, atomic_write_text, fsync_file
from .callbacks import TrainerControl, dispatch
from ..config import WMLConfig
from ..evaluation.heldout import heldout_losses
from ..plugin_system.guards import NonFiniteOmega
from ..plugin_system.host import PluginHost
from ..runtime.run_layout import RunLayout
from .schedules import warmup_cosine
from ..runtime.threads import ThreadGovernor
from ..text.tokens import TokenData

__all__ = ["TrainingError", "TrainState", "finite_or_none", "LastMicroBatch", "deterministic_forward",
           "autocast_for", "TrainingLoop", "truncate_metrics"]


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


@dataclass
class LastMicroBatch:
    """The last micro-batch of an inner step, what the outer step is computed on."""

    batch: Batch
    teacher_logits: Optional[torch.Tensor] = None
    inner: Optional[InnerGradients] = None


def _trainable(peer: torch.nn.Module) -> list:
    return [p for p in peer.parameters() if p.requires_grad]


def deterministic_forward(peers) -> bool:
    """True when no peer has dropout (modules or Hugging Face config rates above 0): then the
    train-mode inner step computes exactly the function the hypergradient differentiates."""
    for peer in peers:
        if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in peer.modules()):
            return False
        config = getattr(peer, "config", None)
        values = config.to_dict() if hasattr(config, "to_dict") else {}
        for key, value in values.items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and value > 0:
                return False
    return True


def autocast_for(device: torch.device, bf16: bool):
    """A factory of fresh autocast contexts: bf16 on CUDA when asked, otherwise none.

    Why a factory: an ``autocast`` object stores the state it replaced on itself, so entering
    one object twice (nested) restores the wrong state on exit and leaves bf16 on for good."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _device_names(text: str) -> list[str]:
    return [d.strip() for d in str(text or "").split(",") if d.strip()]


class TrainingLoop:
    """Owns the peers, their optimizers, the loss and the updater for one run."""

    def __init__(self, cfg: WMLConfig, host: PluginHost, peers: list, data: TokenData, run_dir: Path,
                 device: torch.device, *, loss, updater, teacher=None, log=print, callbacks: Sequence = ()):
        self.cfg, self.host, self.peers, self.data = cfg, host, peers, data
        self.layout, self.device, self.teacher, self.log = RunLayout(run_dir), device, teacher, log
        self.loss, self.updater, self.callbacks = loss, updater, list(callbacks)
        if getattr(self.loss, "needs_teacher", False) and teacher is None:
            raise ValueError(f"loss {cfg.loss!r} needs a teacher, and none is loaded")
        self.dist = distributed.current()          # one process, or this rank of a data-parallel run
        self.peer_devices = peer_placement(peers, cfg.peer_placement, _device_names(cfg.peer_devices), device,
                                           self.dist.local_rank, self.dist.local_world)
        for p, d in zip(self.peers, self.peer_devices):
            p.to(d).train()
        self.optimizers = [self._adamw(p) for p in self.peers]
        self.state = TrainState(omega=self.updater.initial_omega().to(torch.float64), nonfinite=[0] * len(peers))
        self.control = TrainerControl()
        self._noted: set[str] = set()
        self.gen_train = torch.Generator().manual_seed(cfg.seed + 11)
        self.gen_outer = torch.Generator().manual_seed(cfg.seed + 12)
        self.autocast = autocast_for(device, cfg.bf16)
        self.threads = ThreadGovernor(cfg.threads, device.type)
        self.dist.check_batch(cfg.batch_size)
        self.dtype = torch.float64 if next(peers[0].parameters()).dtype == torch.float64 else torch.float32
        # the updater may reuse the inner step's gradients only if they are the ones it would compute
        self._offer_inner = bool(getattr(updater, "uses_inner_gradients", False)) and deterministic_forward(peers)
        self._offer_preconditioner = bool(getattr(updater, "uses_preconditioner", False))
        self.teacher_val = self._heldout([teacher])["losses"][0] if teacher is not None else None

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    def _adamw(self, model):
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # fused: one kernel per step for all tensors (CPU and CUDA), not a loop of small ops per tensor
        return torch.optim.AdamW(groups, lr=self.cfg.learning_rate, betas=(self.cfg.beta1, self.cfg.beta2),
                                 fused=all(p.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
                                           for p in model.parameters()))

    # -- one optimizer step of every peer --------------------------------------------------
    def lr(self, step: int) -> float:
        c = self.cfg
        return warmup_cosine(step, c.learning_rate, c.min_lr, c.warmup_iters, c.lr_decay_iters)

    def _teacher_logits(self, x):
        if not getattr(self.loss, "needs_teacher", False):
            return None
        with torch.no_grad(), self.autocast():
            return peer_logits(self.teacher, x)

    def accumulate(self, capture: bool = False) -> tuple[torch.Tensor, "LastMicroBatch"]:
        """Forward and backward of every micro-batch; the gradients stay in ``p.grad``.

        Returns the per-peer means of (CE, KL, loss), shape (3, M), read back once, and the last
        micro-batch with its teacher logits, and (``capture``) what the outer step can reuse of it
        (:class:`~wml_framework.api.InnerGradients`).
        """
        c = self.cfg
        omega = self.state.omega.to(self.device, self.dtype)
        sums = torch.zeros(3, len(self.peers), device=self.device, dtype=torch.float64)
        last = None
        for k in range(c.num_batches):
            x, y = self.data.batch("train", c.batch_size, c.block_size, self.gen_train)   # the global batch
            x, y = self.dist.share(x).to(self.device), self.dist.share(y).to(self.device)
            teacher_logits = self._teacher_logits(x)
            last = LastMicroBatch(Batch(x, y), teacher_logits)
            if capture and k == c.num_batches - 1:
                out, last.inner = self._captured_backward(x, y, omega, teacher_logits)
            else:
                with self.autocast():
                    logits = [peer_logits(p, x) for p in self.peers]
                    out = self.loss(logits, y, omega, teacher_logits=teacher_logits)
                (out.total / c.num_batches).backward()
            sums += torch.stack([out.ce.detach(), out.kl.detach(), out.per_peer.detach()]).double()
        if self.dist.active:                      # the gradient and the logged losses of the global batch
            for peer in self.peers:
                self.dist.mean_([p.grad for p in peer.parameters()])
            self.dist.mean_([sums])
        return sums / c.num_batches, last

    def _captured_backward(self, x, y, omega, teacher_logits):
        """The same forward and backward, taken so that G = ∇θL_1 = Jᵀu stays differentiable in
        u = ∂L_1/∂z: the hypergradient then gets ż = J v by one more backward (double VJP)
        instead of recomputing step 1 and running forward mode. Adds G / num_batches to ``p.grad``."""
        with eager_attention(self.peers), self.autocast():
            logits = [peer_logits(p, x) for p in self.peers]
        z_leaf = [z.detach().requires_grad_(True) for z in logits]
        with self.autocast():
            out = self.loss(z_leaf, y, omega, teacher_logits=teacher_logits)
        out.total.backward()
        u = [(torch.zeros_like(z) if z.grad is None else z.grad).detach().requires_grad_(True) for z in z_leaf]
        params = [_trainable(p) for p in self.peers]
        flat = [t for ps in params for t in ps]
        with eager_attention(self.peers):
            grads = torch.autograd.grad(logits, flat, grad_outputs=u, allow_unused=True, create_graph=True)
        n = self.cfg.num_batches
        for t, g in zip(flat, grads):
            if g is not None:
                share = g.detach() / n
                t.grad = share if t.grad is None else t.grad.add_(share)
        graph = [(k, g) for k, g in enumerate(grads) if g is not None]

        def tangents(v_flat: list) -> list:
            z_dot = torch.autograd.grad([g for _, g in graph], u, allow_unused=True,
                                        grad_outputs=[torch.zeros_like(g) if v_flat[k] is None else v_flat[k]
                                                      for k, g in graph])
            graph.clear()     # the graph is freed by this backward; a second call would fail anyway
            return [torch.zeros_like(w) if d is None else d.detach() for d, w in zip(z_dot, u)]

        per_peer, k = [], 0
        for ps in params:
            # ranks hold a share of the batch: the outer step needs the global G (a copy, so the graph keeps its own)
            per_peer.append([None if g is None else (g.detach().clone() if self.dist.active else g.detach())
                             for g in grads[k:k + len(ps)]])
            self.dist.mean_(per_peer[-1])
            k += len(ps)
        inner = InnerGradients(grads=per_peer, logits=[z.detach() for z in logits],
                               logit_grads=[w.detach() for w in u], tangents=tangents)
        return out, inner

    def _optimizer_steps(self, losses: torch.Tensor) -> list[int]:
        """Clip and step every peer whose loss and gradient are finite; skip the others (their
        weights and AdamW state stay as they were) and stop the run when one keeps failing."""
        c, st = self.cfg, self.state
        lr = self.lr(st.step)
        norms = []
        for peer in self.peers:
            grads = [p.grad for p in peer.parameters() if p.grad is not None]
            norms.append(torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device))
        norm_values = torch.stack([n.float().to(self.device) for n in norms]).tolist()   # one host sync for all peers
        skipped = []
        for i, (peer, opt) in enumerate(zip(self.peers, self.optimizers)):
            if not (math.isfinite(float(losses[i])) and math.isfinite(norm_values[i])):
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
                torch.nn.utils.clip_grads_with_norm_(peer.parameters(), c.grad_clip, norms[i])
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        return skipped

    # -- one ω update on held-out data -------------------------------------------------------
    def outer_step(self, last: "LastMicroBatch") -> dict:
        """One update of ω, after the inner step's backward and before its optimizer step: the peers
        hold the weights θ that the step's gradient was computed at, and γ is that step's rate.
        The accumulated gradients are set aside meanwhile, so an updater may use ``backward``."""
        c, st = self.cfg, self.state
        vx, vy = self.data.batch("val", c.batch_size, c.block_size, self.gen_outer)
        vx, vy = self.dist.share(vx), self.dist.share(vy)
        ctx = OuterContext(peers=self.peers, loss=self.loss, omega=st.omega.clone(), train=last.batch,
                           val=Batch(vx.to(self.device), vy.to(self.device)), inner_lr=self.lr(st.step),
                           outer_step=st.step // c.outer_every, teacher_logits=last.teacher_logits,
                           inner=last.inner, reduce_mean=self.dist.mean_)
        if self._offer_preconditioner:     # from the step's whole (all-reduced) gradient, before it is set aside
            ctx.preconditioner = adam_preconditioner(self.optimizers, self.peers, c.grad_clip)
        kept = [[p.grad for p in peer.parameters()] for peer in self.peers]
        for peer in self.peers:
            peer.zero_grad(set_to_none=True)
        problem = None
        try:
            result = self.updater.step(ctx)
        except NonFiniteOmega as exc:
            problem = exc.problem
        finally:
            for peer, grads in zip(self.peers, kept):
                for p, g in zip(peer.parameters(), grads):
                    p.grad = g
        if self.dist.active:          # skipped on one rank: skipped on all (the collectives stay in step)
            problem = next((p for p in self.dist.gather(problem) if p is not None), None)
        if problem is not None:
            self.log(f"warning: step {st.step + 1}: outer step skipped, ω kept: {problem}")
            return {"kind": "outer", "step": st.step + 1, "omega": st.omega.tolist(), "eta": 0.0, "grad": None,
                    "val_loss": None, "info": {}, "skipped": problem}
        for note in getattr(self.updater, "notes", []):
            if note not in self._noted:
                self._noted.add(note)
                self.log(f"warning: {note}")
        st.omega = result.omega.detach().to("cpu", torch.float64)
        if self.dist.active:
            if distributed.debug_checks():
                self.dist.same_everywhere(st.omega, f"ω after the outer step of step {st.step + 1}")
            st.omega = self.dist.broadcast(st.omega)   # identical already when the updater reduces; now for sure
        grad = None if result.grad is None else finite_or_none(result.grad.detach().cpu().tolist())
        return {"kind": "outer", "step": st.step + 1, "omega": st.omega.tolist(), "eta": float(result.eta),
                "grad": grad, "val_loss": result.val_loss, "info": dict(result.info), "skipped": None}

    # -- evaluation on the fixed blocks of the evaluated half ------------------------------------
    def _heldout(self, models: list, omega=None) -> dict:
        c = self.cfg
        return heldout_losses(models, self.data.val_eval, c.block_size, c.batch_size,
                              max_blocks=c.eval_batches * c.batch_size, omega=omega, device=self.device,
                              autocast=self.autocast, shard=(self.dist.rank, self.dist.world),
                              reduce_sum=self.dist.sum_floats)

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
            if self.dist.is_main:     # one writer; every rank holds the same state
                fsync_file(self.layout.metrics)
                checkpoint.save(self.run_dir, self.state_dict())
        self._saved_at = self.state.step
        self._emit(Event.CHECKPOINT, {"step": self.state.step})

    # -- the loop --------------------------------------------------------------------------------
    def _emit(self, event: Event, payload: dict) -> None:
        """Observers hear rank 0 only; callbacks run on every rank (they see the same, reduced,
        records, so a callback's stop or save is the same decision everywhere)."""
        if self.dist.is_main:
            self.host.emit(event, {**payload, "run_dir": str(self.run_dir), "total_steps": self.cfg.max_steps})
        dispatch(self.callbacks, event, payload, self.state, self.control)
        if self.dist.active and self.callbacks:   # a callback's decision on one rank is every rank's
            ctl = self.control
            flags = [any(f) for f in zip(*self.dist.gather((ctl.should_stop, ctl.should_evaluate, ctl.should_save)))]
            ctl.should_stop, ctl.should_evaluate, ctl.should_save = flags

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            append_jsonl(self.layout.metrics, record, sync=False)   # flushed now, synced with each checkpoint
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
        threads_before = torch.get_num_threads()
        with interrupts.handling(), _restoring_threads(threads_before):
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
        """One optimizer step of every peer; every ``outer_every`` steps an ω update comes between
        the backward and the optimizer step (so it describes the step being taken)."""
        c, st, ctl = self.cfg, self.state, self.control
        self.threads.before_step()
        t0 = time.perf_counter()
        outer_due = self.updater.needs_validation and (st.step + 1) % c.outer_every == 0
        omega_used = st.omega.tolist()
        means, last = self.accumulate(capture=outer_due and self._offer_inner)
        outer = self.outer_step(last) if outer_due else None
        means = means.cpu()
        skipped = self._optimizer_steps(means[2])
        st.tokens += c.num_batches * c.batch_size * c.block_size
        record = {"kind": "train", "step": st.step + 1, "tokens": st.tokens, "lr": self.lr(st.step),
                  "ce": finite_or_none(means[0].tolist()), "kl": finite_or_none(means[1].tolist()),
                  "loss": finite_or_none(means[2].tolist()), "omega": omega_used, "skipped": skipped,
                  "tokens_per_s": c.num_batches * c.batch_size * c.block_size / (time.perf_counter() - t0)}
        self.threads.after_step(time.perf_counter() - t0, comparable=outer is None)
        record["threads"] = torch.get_num_threads()
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
        if self.dist.active:          # a signal to one rank stops them all, at the same step
            with interrupts.deferred():
                signals = self.dist.gather(interrupts.pending())
            interrupts.agree(next((s for s in signals if s is not None), None))
        if interrupts.pending() is not None:
            if self._saved_at != self.state.step:
                self.save_checkpoint()
            with interrupts.deferred():
                self.dist.barrier()   # no rank leaves (and gets its launcher to stop rank 0) before the save
            interrupts.raise_pending(self.state.step)


@contextlib.contextmanager
def _restoring_threads(n: int):
    """The thread governor's choice lasts for the training only (the caller's setting comes back)."""
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
