"""The bi-level WML training loop (method.md §3–§5), readable top to bottom.

Inner step: every peer takes one AdamW step on the loss plugin's Σ_i L_i, accumulated over
``num_batches`` micro-batches, whose inputs and labels the objective plugin makes from blocks of
tokens (the causal shift, BERT masking …) and whose attention it chooses per step. Outer step (every ``outer_every`` steps, after the backward and
before the optimizer step, so it describes the step taken): the updater plugin moves ω using the
last train micro-batch (with what the inner step computed on it) and a batch of the ω half of the
held-out split. Evaluation on fixed blocks of the other half drives early stopping. Every step is
logged to ``metrics.jsonl`` and announced as an event (observers, callbacks); checkpoints make runs
resumable. The teacher ``wml run`` trains goes through this same loop (one model, the ``ce`` loss,
ω never moved) with its own :class:`~.loop_settings.LoopSettings` (:func:`~.teacher.teacher_settings`).

Over 450 lines on purpose: one step (inner accumulation, the outer step between backward and the
optimizer step, the guarded optimizer steps, evaluation, checkpoints, signals) reads in one file,
in order, as nanoGPT's loop does; what is not the loop itself lives beside it (state, settings,
records, forward helpers).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..api import (
    IGNORE_INDEX,
    Batch,
    Event,
    InnerGradients,
    OuterContext,
    TokenInfo,
    attending,
    peer_logits,
    trainable_parameters,
)
from ..config import WMLConfig
from ..evaluation.heldout import heldout_losses
from ..plugin_system.guards import NonFiniteOmega, at_step, checked_objective
from ..plugin_system.host import PluginError, PluginHost
from ..runtime import checkpoint, distributed, interrupts
from ..runtime.atomic import append_jsonl, fsync_file
from ..runtime.placement import device_names, peer_placement
from ..runtime.run_layout import RunLayout
from ..runtime.threads import ThreadGovernor
from ..text.tokens import HELDOUT_SPLIT_RULE, TokenData
from .adam_precond import adam_preconditioner
from .attention import eager_attention
from .callbacks import TrainerControl, TrainerState, dispatch
from .forward import autocast_for, deterministic_forward
from .loop_settings import LoopSettings
from .loop_state import LastMicroBatch, TrainingError, TrainState
from .records import finite_or_none, truncate_metrics, truncate_records
from .schedules import warmup_cosine

__all__ = ["TrainingError", "TrainState", "finite_or_none", "LastMicroBatch", "deterministic_forward",
           "autocast_for", "TrainingLoop", "truncate_metrics"]


class TrainingLoop:
    """Owns the models it trains (the peers, or the teacher), their optimizers, the loss and the
    updater; ``settings`` (default: the peers' of ``cfg``) says for how long and where it logs."""

    def __init__(self, cfg: WMLConfig, host: PluginHost, peers: list, data: TokenData, run_dir: Path,
                 device: torch.device, *, loss, updater, teacher=None, log=print, callbacks: Sequence = (),
                 settings: Optional[LoopSettings] = None, objective=None, milestones=None):
        self.settings = settings or LoopSettings.for_peers(cfg)
        self.cfg, self.host, self.peers, self.data = cfg, host, peers, data
        # how blocks become inputs and labels: the run's objective plugin (``cfg.objective``) unless given
        self.objective = objective or checked_objective(
            host.create("objective", cfg.objective, cfg, options=cfg.plugin_options(cfg.objective)),
            host.get("objective", cfg.objective))
        self.tokens = TokenInfo.of(data.tokenizer, data.vocab_size)
        self.step_words = 0                # words the current step trains on (set by accumulate)
        self.milestones = milestones       # word-milestone checkpoints (BabyLM tracks), or None
        self.layout, self.device, self.teacher, self.log = RunLayout(run_dir), device, teacher, log
        self.loss, self.updater, self.callbacks = loss, updater, list(callbacks)
        if self.loss.needs_teacher and teacher is None:
            raise ValueError(f"loss {cfg.loss!r} needs a teacher, and none is loaded")
        # one process, or this rank of a data-parallel run (the teacher trains on rank 0 alone)
        self.dist = distributed.current() if self.settings.data_parallel else distributed.SINGLE
        self.names = self.settings.model_names(len(peers))
        self.peer_devices = peer_placement(peers, self.settings.placement, device_names(cfg.peer_devices), device,
                                           self.dist.local_rank, self.dist.local_world)
        for p, d in zip(self.peers, self.peer_devices):
            p.to(d).train()
        self.optimizers = [self._adamw(p) for p in self.peers]
        self.state = TrainState(omega=self.updater.initial_omega().to(torch.float64), nonfinite=[0] * len(peers))
        self.control = TrainerControl()
        self._noted: set[str] = set()
        self.gen_train = torch.Generator().manual_seed(self.settings.train_seed)
        self.gen_outer = torch.Generator().manual_seed(self.settings.outer_seed)
        self.autocast = autocast_for(device, cfg.bf16)
        self.threads = ThreadGovernor(cfg.threads, device.type)
        self.dist.check_batch(cfg.batch_size)
        self.dtype = torch.float64 if next(peers[0].parameters()).dtype == torch.float64 else torch.float32
        # the updater may reuse the inner step's gradients only if they are the ones it would compute
        self._offer_inner = updater.uses_inner_gradients and deterministic_forward(peers)
        self._offer_preconditioner = updater.uses_preconditioner
        self.teacher_val = self.score_heldout([teacher])["losses"][0] if teacher is not None else None

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    @property
    def records(self) -> Path:
        """The file this loop logs its records to (``metrics.jsonl`` for the peers)."""
        return self.layout.root / self.settings.metrics_file

    @property
    def offers_inner_gradients(self) -> bool:
        """Whether the outer step hands the updater the inner step's gradients (``accumulate(capture=…)``)."""
        return self._offer_inner

    def _adamw(self, model):
        """AdamW with decay on matrices only: biases and norms (dim < 2) are not decayed."""
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # fused: one kernel per step for all tensors (CPU and CUDA), not a loop of small ops per tensor
        return torch.optim.AdamW(groups, lr=self.settings.learning_rate, betas=(self.cfg.beta1, self.cfg.beta2),
                                 fused=all(p.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
                                           for p in model.parameters()))

    # -- one optimizer step of every peer --------------------------------------------------
    def lr(self, step: int) -> float:
        s = self.settings
        return warmup_cosine(step, s.learning_rate, s.min_lr, s.warmup_iters, s.lr_decay_iters)

    def _teacher_logits(self, x):
        if not self.loss.needs_teacher:
            return None
        with torch.no_grad(), self.autocast():
            return peer_logits(self.teacher, x)

    def accumulate(self, capture: bool = False) -> tuple[torch.Tensor, "LastMicroBatch"]:
        """Forward and backward of every micro-batch; the gradients stay in ``p.grad``.

        Returns the per-peer means of (CE, KL, loss), shape (3, M), read back once, and the last
        micro-batch with its teacher logits, and (``capture``) what the outer step can reuse of it
        (:class:`~wml_framework.api.InnerGradients`).
        """
        c, n = self.cfg, self.settings.num_batches
        omega = self.state.omega.to(self.device, self.dtype)
        sums = torch.zeros(3, len(self.peers), device=self.device, dtype=torch.float64)
        last = None
        batches, self.step_words = [], 0
        for _ in range(n):                        # the global micro-batches, and the words they hold
            block, words = self.data.train_blocks(c.batch_size, c.block_size, self.gen_train)
            batches.append(self.objective.batch(block, self.state.step, self.gen_train, self.tokens))
            self.step_words += words
        for k, scale in enumerate(self._token_weights([y for _, y in batches])):
            x, y = batches[k]
            x, y = self.dist.share(x).to(self.device), self.dist.share(y).to(self.device)
            teacher_logits = self._teacher_logits(x)
            last = LastMicroBatch(Batch(x, y), teacher_logits)
            if capture and k == n - 1:
                out, last.inner = self._captured_backward(x, y, omega, teacher_logits, scale)
            else:
                with self.autocast():
                    logits = [peer_logits(p, x) for p in self.peers]
                    out = self.loss(logits, y, omega, teacher_logits=teacher_logits)
                (out.total / n if scale == 1.0 else out.total * (scale / n)).backward()
            sums += torch.stack([out.ce.detach(), out.kl.detach(), out.per_peer.detach()]).double() * scale
        if self.dist.active:                      # the gradient and the logged losses of the global batch
            for peer in self.peers:
                self.dist.mean_([p.grad for p in peer.parameters()])
            self.dist.mean_([sums])
        return sums / n, last

    def _token_weights(self, labels: list) -> list[float]:
        """Each micro-batch's weight on this rank, so that the step's gradient and logged losses are
        token means over the step's whole batch (every micro-batch, every rank), as one process with
        one big batch would compute them: (this share's labelled tokens) · num_batches · ranks /
        (all labelled tokens of the step). Exactly 1.0 when every share labels as many tokens (causal
        objectives); masking labels a random number, and a plain mean of the shares' means would give
        a share's few labels the weight of another's many. Every rank holds every global batch, so
        this needs no communication."""
        n, world = len(labels), self.dist.world
        total = sum(int((y != IGNORE_INDEX).sum()) for y in labels)
        if total == 0:
            return [1.0] * n
        return [int((self.dist.share(y) != IGNORE_INDEX).sum()) * n * world / total for y in labels]

    def _captured_backward(self, x, y, omega, teacher_logits, scale: float = 1.0):
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
        params = [list(trainable_parameters(p).values()) for p in self.peers]
        flat = [t for ps in params for t in ps]
        with eager_attention(self.peers):
            grads = torch.autograd.grad(logits, flat, grad_outputs=u, allow_unused=True, create_graph=True)
        n = self.settings.num_batches
        for t, g in zip(flat, grads):
            if g is not None:
                share = g.detach() / n if scale == 1.0 else g.detach() * (scale / n)
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

    def optimizer_steps(self, losses: torch.Tensor) -> list[int]:
        """Clip and step every model whose loss (``losses[i]``) and gradient are finite; skip the
        others (their weights and AdamW state stay as they were) and stop the run when one keeps
        failing. Returns the indices skipped; ``state.step`` is the caller's to advance."""
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
                    key = "teacher_learning_rate" if self.settings.model == "teacher" else "learning_rate"
                    raise TrainingError(
                        f"{self.names[i]} produced a non-finite loss or gradient in {st.nonfinite[i]} consecutive "
                        f"steps (the last at step {st.step + 1}); stopping. The checkpoints before it are intact: "
                        f"lower {key} (or raise grad_clip protection) and start again, or resume to retry.")
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
        block = self.data.blocks("val", c.batch_size, c.block_size, self.gen_outer)
        vx, vy = self.objective.batch(block, st.step, self.gen_outer, self.tokens)
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
        problem, refused = None, None
        try:
            result = self.updater.step(ctx)
        except NonFiniteOmega as exc:
            problem, refused = exc.problem, exc
        finally:
            for peer, grads in zip(self.peers, kept):
                for p, g in zip(peer.parameters(), grads):
                    p.grad = g
        if self.dist.active:          # skipped on one rank: skipped on all (the collectives stay in step)
            problem = next((p for p in self.dist.gather(problem) if p is not None), None)
        if problem is not None:
            st.nonfinite_outer += 1
            if st.nonfinite_outer >= c.nonfinite_patience:
                who = (f"plugin {refused.plugin!r} ({refused.hook})" if refused is not None
                       else "the updater (on another process of the run)")
                raise TrainingError(
                    f"{who} returned a non-finite ω in {st.nonfinite_outer} consecutive outer steps (the last at "
                    f"step {st.step + 1}: {problem}); stopping. The checkpoints before it are intact: fix the "
                    "updater (or what feeds it: a diverging peer, a learning rate too high) and resume, or start again.")
            self.log(f"warning: step {st.step + 1}: outer step skipped, ω kept: {problem}")
            return {"kind": "outer", "step": st.step + 1, "omega": st.omega.tolist(), "eta": 0.0, "grad": None,
                    "val_loss": None, "info": {}, "skipped": problem}
        st.nonfinite_outer = 0
        for note in self.updater.notes:
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
    def score_heldout(self, models: list, omega=None, observe=None) -> dict:
        """``heldout_losses`` of ``models`` on the evaluation blocks, this rank scoring its share
        (``observe``: see :func:`heldout_losses`)."""
        c = self.cfg
        return heldout_losses(models, self.data.val_eval, c.block_size, c.batch_size,
                              max_blocks=c.eval_batches * c.batch_size, omega=omega, device=self.device,
                              autocast=self.autocast, shard=(self.dist.rank, self.dist.world),
                              reduce_sum=self.dist.sum_floats, objective=self.objective, tokens_info=self.tokens,
                              observe=observe)

    def evaluate(self, observe=None) -> dict:
        """The ``eval`` record of now: each model's held-out loss and their ω-ensemble's."""
        out = self.score_heldout(self.peers, omega=self.state.omega, observe=observe)
        ens = out["ensemble"] if math.isfinite(out["ensemble"]) else None
        return {"kind": "eval", "step": self.state.step, "val_loss": finite_or_none(out["losses"]),
                "ensemble_val_loss": ens, "teacher_val_loss": self.teacher_val}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        st = self.state
        return {
            "step": st.step, "tokens": st.tokens, "words": st.words, "omega": st.omega, "best_val": st.best_val,
            "bad_evals": st.bad_evals, "stopped_early": st.stopped_early, "nonfinite": list(st.nonfinite),
            "nonfinite_outer": st.nonfinite_outer, "heldout_split": HELDOUT_SPLIT_RULE,
            "peer_configs": [p.config.to_dict() for p in self.peers],
            "peers": [p.state_dict() for p in self.peers],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "updater": self.updater.state_dict(),
            "gen_train": self.gen_train.get_state(), "gen_outer": self.gen_outer.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, s: dict) -> None:
        rule = s.get("heldout_split", "first-and-second-half")   # checkpoints before the rule was recorded
        if rule != HELDOUT_SPLIT_RULE:
            self.log(f"warning: the checkpoint was written under held-out split {rule!r}, this version splits by "
                     f"{HELDOUT_SPLIT_RULE!r}: ω now tunes on, and evaluation scores, other held-out text, so the "
                     "losses logged before and after this resume are not comparable (docs/data.md)")
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
        self.state = TrainState(step=s["step"], tokens=s["tokens"], words=int(s.get("words", 0)), omega=s["omega"], best_val=s["best_val"],
                                bad_evals=s["bad_evals"], stopped_early=s["stopped_early"],
                                nonfinite=list(s.get("nonfinite", [0] * len(self.peers))),
                                nonfinite_outer=int(s.get("nonfinite_outer", 0)))

    def resume(self, s: dict) -> None:
        """Continue from checkpoint ``s``: its state, and this loop's records cut back to its step
        (from step 0 they go: the step-0 evaluation is logged again)."""
        self.load_state_dict(s)
        if self.dist.is_main and self.state.step == 0:
            self.records.unlink(missing_ok=True)
        elif self.dist.is_main:
            truncate_records(self.records, self.state.step)

    def save_checkpoint(self) -> None:
        with interrupts.deferred():   # a signal during the write waits for it to finish
            if self.dist.is_main:     # one writer; every rank holds the same state
                fsync_file(self.records)
                checkpoint.save(self.run_dir, self.state_dict(), kind=self.settings.checkpoint_kind)
        self._saved_at = self.state.step
        self._emit(Event.CHECKPOINT, {"step": self.state.step})

    # -- the loop --------------------------------------------------------------------------------
    def trainer_state(self, phase: Optional[str] = None) -> TrainerState:
        """What callbacks are told about this loop now (a copy: changing it changes nothing)."""
        st, s = self.state, self.settings
        return TrainerState(phase=phase or s.phase, model=s.model, step=st.step, max_steps=s.max_steps,
                            tokens=st.tokens, omega=tuple(st.omega.tolist()), best_val=st.best_val,
                            bad_evals=st.bad_evals, stopped_early=st.stopped_early, num_models=len(self.peers),
                            run_dir=str(self.run_dir))

    def _emit(self, event: Event, payload: dict) -> None:
        """Observers hear rank 0 only, and only the loops announced to them (the peers'); callbacks
        run on every rank (they see the same, reduced, records, so a callback's stop or save is the
        same decision everywhere)."""
        if self.dist.is_main and self.settings.announced:
            self.host.emit(event, {**payload, "run_dir": str(self.run_dir), "total_steps": self.settings.max_steps},
                           log=self.log)
        if self.callbacks:
            dispatch(self.callbacks, event, payload, self.trainer_state(), self.control)
        if self.dist.active and self.callbacks:   # a callback's decision on one rank is every rank's
            ctl = self.control
            flags = [any(f) for f in zip(*self.dist.gather((ctl.should_stop, ctl.should_evaluate, ctl.should_save)))]
            ctl.should_stop, ctl.should_evaluate, ctl.should_save = flags

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            append_jsonl(self.records, record, sync=False)   # flushed now, synced with each checkpoint
        self._emit(Event(record["kind"]), record)

    def _early_stop(self, ev: dict) -> bool:
        st, c = self.state, self.cfg
        if ev["ensemble_val_loss"] is not None and ev["ensemble_val_loss"] < st.best_val - 1e-4:
            st.best_val, st.bad_evals = ev["ensemble_val_loss"], 0
        else:
            st.bad_evals += 1
        return self.settings.early_stopping and st.bad_evals >= c.early_stopping_patience

    def _evaluate_and_log(self) -> None:
        ev = self.evaluate()
        self._log(ev)
        self.state.stopped_early = self._early_stop(ev)

    def train(self) -> TrainState:
        """Steps until ``max_steps``, early stopping or a callback's stop. A signal (SIGINT, SIGTERM,
        SIGUSR1) lets the current step finish, writes a checkpoint, then raises ``Interrupted``."""
        st, ctl, max_steps = self.state, self.control, self.settings.max_steps
        self._saved_at = None
        threads_before = torch.get_num_threads()
        with interrupts.handling(), _restoring_threads(threads_before):
            self._emit(Event.RUN_START, {"step": st.step, "num_peers": len(self.peers), "config": self.cfg.to_dict()})
            if st.step == 0:
                with interrupts.deferred(), self._naming_the_step(0):
                    self._log(self.evaluate())
                    self.save_checkpoint()  # from here on the run resumes instead of rebuilding its peers
                self._stop_if_signalled()
            while st.step < max_steps and not st.stopped_early and not ctl.should_stop:
                with interrupts.deferred():
                    self.step()
                self._stop_if_signalled()
            self._emit(Event.RUN_END, {"step": st.step, "stopped_early": st.stopped_early,
                                       "stopped_by_callback": ctl.should_stop})
        return st

    def step(self) -> None:
        """One optimizer step of every peer, as :meth:`train` takes it: every ``outer_every`` steps
        an ω update comes between the backward and the optimizer step (so it describes the step
        being taken); then the records, and the evaluation and checkpoint when they are due."""
        with self._naming_the_step(self.state.step + 1):
            c, s, st, ctl = self.cfg, self.settings, self.state, self.control
            self.threads.before_step()
            t0 = time.perf_counter()
            outer_due = self.updater.needs_validation and (st.step + 1) % c.outer_every == 0
            omega_used = st.omega.tolist()
            models = self.peers + ([self.teacher] if self.teacher is not None else [])
            with attending(models, self.objective.attention(st.step)):   # this step's attention, inner and outer
                means, last = self.accumulate(capture=outer_due and self.offers_inner_gradients)
                outer = self.outer_step(last) if outer_due else None
            means = means.cpu()
            skipped = self.optimizer_steps(means[2])
            st.tokens += s.num_batches * c.batch_size * c.block_size
            words_before = st.words
            st.words += self.step_words
            record = {"kind": "train", "step": st.step + 1, "tokens": st.tokens, "words": st.words,
                      "lr": self.lr(st.step),
                      "ce": finite_or_none(means[0].tolist()), "kl": finite_or_none(means[1].tolist()),
                      "loss": finite_or_none(means[2].tolist()), "omega": omega_used, "skipped": skipped,
                      "tokens_per_s": s.num_batches * c.batch_size * c.block_size / (time.perf_counter() - t0)}
            self.threads.after_step(time.perf_counter() - t0, comparable=outer is None)
            record["threads"] = torch.get_num_threads()
            st.step += 1
            self._log(record)
            if outer is not None:
                self._log(outer)
            if self.milestones is not None and self.dist.is_main:   # before the checkpoint that passes it
                self.milestones.after_step(self, words_before)
            if st.step % s.eval_interval == 0 or st.step == s.max_steps or ctl.should_evaluate:
                ctl.should_evaluate = False
                self._evaluate_and_log()
            if (st.step % c.checkpoint_interval == 0 or st.step == s.max_steps or st.stopped_early
                    or ctl.should_save or ctl.should_stop):
                ctl.should_save = False
                self.save_checkpoint()

    @contextlib.contextmanager
    def _naming_the_step(self, step: int):
        """A plugin's error inside the block says which step it came at (``…, at step 4: …``)."""
        try:
            yield
        except PluginError as exc:
            raise at_step(exc, f"teacher step {step}" if self.settings.model == "teacher" else f"step {step}") from exc

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
