"""The bi-level WML training loop (method.md §3–§5), readable top to bottom.

Inner step: every peer takes one AdamW step on the loss plugin's Σ_i L_i, accumulated over
``num_batches`` micro-batches. Outer step (every ``outer_every`` steps): the updater plugin
moves ω using a train batch and a held-out batch. Evaluation on fixed held-out blocks drives
early stopping. Every step is logged to ``metrics.jsonl``; a checkpoint makes runs resumable.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from .api import Batch, OuterContext, peer_logits
from .config import WMLConfig
from .data import TokenData, random_blocks
from .io import append_jsonl
from .plugins import PluginHost
from .schedules import warmup_cosine


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device': value 'cuda' is not allowed here: no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class EvalSet:
    """Fixed held-out blocks, so every evaluation of a run scores the same tokens."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_stream(cls, stream: np.ndarray, blocks: int, block_size: int) -> "EvalSet":
        usable = (len(stream) - 1) // block_size
        if usable < 1:
            raise ValueError(f"the held-out split has {len(stream)} tokens, too few for one block of {block_size}")
        starts = np.linspace(0, (usable - 1) * block_size, num=min(blocks, usable)).astype(np.int64)
        rows = torch.from_numpy(np.stack([np.asarray(stream[s: s + block_size + 1], dtype=np.int64) for s in starts]))
        return cls(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())


@dataclass
class TrainState:
    """Everything that changes during training and must survive a resume."""

    step: int = 0
    tokens: int = 0
    omega: torch.Tensor = None
    best_val: float = math.inf
    bad_evals: int = 0
    stopped_early: bool = False
    history: dict = field(default_factory=dict)


class Trainer:
    """Owns the peers, their optimizers, the loss and the updater for one run."""

    def __init__(self, cfg: WMLConfig, host: PluginHost, peers: list, data: TokenData, run_dir: Path,
                 device: torch.device, teacher=None, log=print):
        self.cfg, self.host, self.peers, self.data = cfg, host, peers, data
        self.run_dir, self.device, self.teacher, self.log = Path(run_dir), device, teacher, log
        self.loss = host.create("loss", cfg.loss, cfg)
        self.updater = host.create("updater", cfg.updater, cfg, len(peers))
        if getattr(self.loss, "needs_teacher", False) and teacher is None:
            raise ValueError(f"loss {cfg.loss!r} needs a teacher, and none is loaded")
        for p in self.peers:
            p.to(device).train()
        self.optimizers = [self._adamw(p) for p in self.peers]
        self.state = TrainState(omega=self.updater.initial_omega().to(torch.float64))
        half = len(data.val) // 2  # first half tunes ω, second half is only ever evaluated
        self.val_outer, self.val_eval = data.val[:half], data.val[half:]
        self.eval_set = EvalSet.from_stream(self.val_eval, cfg.eval_batches * cfg.batch_size, cfg.block_size)
        self.gen_train = torch.Generator().manual_seed(cfg.seed + 11)
        self.gen_outer = torch.Generator().manual_seed(cfg.seed + 12)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if device.type == "cuda" and cfg.bf16 else torch.autocast("cpu", enabled=False))
        self.teacher_val = self._eval_model(teacher) if teacher is not None else None

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
        with torch.no_grad(), self.autocast:
            return peer_logits(self.teacher, x)

    def inner_step(self) -> tuple[dict, Batch]:
        c, st = self.cfg, self.state
        lr = self.lr(st.step)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        omega = st.omega.to(self.device, torch.float32)
        M = len(self.peers)
        ce_sum, kl_sum, loss_sum = torch.zeros(M), torch.zeros(M), torch.zeros(M)
        for _ in range(c.num_batches):
            x, y = self.data.batch("train", c.batch_size, c.block_size, self.gen_train)
            x, y = x.to(self.device), y.to(self.device)
            with self.autocast:
                logits = [peer_logits(p, x) for p in self.peers]
                out = self.loss(logits, y, omega, teacher_logits=self._teacher_logits(x))
            (out.total / c.num_batches).backward()
            ce_sum += out.ce.detach().float().cpu()
            kl_sum += out.kl.detach().float().cpu()
            loss_sum += out.per_peer.detach().float().cpu()
        for peer, opt in zip(self.peers, self.optimizers):
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(peer.parameters(), c.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        n = c.num_batches
        st.tokens += n * c.batch_size * c.block_size
        record = {"kind": "train", "step": st.step + 1, "tokens": st.tokens, "lr": lr,
                  "ce": (ce_sum / n).tolist(), "kl": (kl_sum / n).tolist(), "loss": (loss_sum / n).tolist(),
                  "omega": st.omega.tolist()}
        return record, Batch(x, y)

    # -- one ω update on held-out data -------------------------------------------------------
    def outer_step(self, train_batch: Batch) -> dict:
        c, st = self.cfg, self.state
        vx, vy = random_blocks(self.val_outer, c.batch_size, c.block_size, self.gen_outer, "held-out (ω)")
        ctx = OuterContext(peers=self.peers, loss=self.loss, omega=st.omega.clone(), train=train_batch,
                           val=Batch(vx.to(self.device), vy.to(self.device)), inner_lr=self.lr(st.step),
                           outer_step=st.step // c.outer_every, teacher_logits=self._teacher_logits(train_batch.inputs))
        result = self.updater.step(ctx)
        for p in self.peers:
            p.zero_grad(set_to_none=True)
        st.omega = result.omega.detach().to("cpu", torch.float64)
        record = {"kind": "outer", "step": st.step + 1, "omega": st.omega.tolist(), "eta": float(result.eta),
                  "grad": None if result.grad is None else result.grad.detach().cpu().tolist()}
        record.update({k: v for k, v in result.info.items() if isinstance(v, (int, float, str, bool))})
        return record

    # -- evaluation on the fixed held-out blocks ------------------------------------------------
    @torch.no_grad()
    def _logits_on_eval(self, model, i: int):
        x = self.eval_set.x[i: i + self.cfg.batch_size].to(self.device)
        with self.autocast:
            return peer_logits(model, x).float()

    @torch.no_grad()
    def _eval_model(self, model) -> float:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for i in range(0, len(self.eval_set.x), self.cfg.batch_size):
            z = self._logits_on_eval(model, i)
            y = self.eval_set.y[i: i + self.cfg.batch_size].to(self.device)
            total += F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        model.train(was_training)
        return total / count

    @torch.no_grad()
    def evaluate(self) -> dict:
        for p in self.peers:
            p.eval()
        omega = self.state.omega.to(self.device, torch.float32)
        sums, ens, count = [0.0] * len(self.peers), 0.0, 0
        for i in range(0, len(self.eval_set.x), self.cfg.batch_size):
            y = self.eval_set.y[i: i + self.cfg.batch_size].to(self.device)
            zs = [self._logits_on_eval(p, i) for p in self.peers]
            for k, z in enumerate(zs):
                sums[k] += F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="sum").item()
            z_ens = sum(w * z for w, z in zip(omega, zs))
            ens += F.cross_entropy(z_ens.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        for p in self.peers:
            p.train()
        return {"kind": "eval", "step": self.state.step, "val_loss": [s / count for s in sums],
                "ensemble_val_loss": ens / count, "teacher_val_loss": self.teacher_val}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        st = self.state
        return {
            "step": st.step, "tokens": st.tokens, "omega": st.omega, "best_val": st.best_val,
            "bad_evals": st.bad_evals, "stopped_early": st.stopped_early,
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
                                bad_evals=s["bad_evals"], stopped_early=s["stopped_early"])

    def save_checkpoint(self) -> None:
        checkpoint.save(self.run_dir, self.state_dict())
        self.host.emit("checkpoint", {"run_dir": str(self.run_dir), "step": self.state.step})

    # -- the loop --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        append_jsonl(self.run_dir / "metrics.jsonl", record)
        self.host.emit(record["kind"] if record["kind"] != "train" else "step",
                       {**record, "run_dir": str(self.run_dir), "total_steps": self.cfg.num_epochs})

    def _early_stop(self, ev: dict) -> bool:
        st, c = self.state, self.cfg
        if ev["ensemble_val_loss"] < st.best_val - 1e-4:
            st.best_val, st.bad_evals = ev["ensemble_val_loss"], 0
        else:
            st.bad_evals += 1
        return c.enable_early_stopping and st.bad_evals >= c.early_stopping_patience

    def train(self) -> TrainState:
        c, st = self.cfg, self.state
        self.host.emit("run_start", {"run_dir": str(self.run_dir), "total_steps": c.num_epochs, "step": st.step,
                                     "num_peers": len(self.peers)})
        if st.step == 0:
            self._log(self.evaluate())
        while st.step < c.num_epochs and not st.stopped_early:
            t0 = time.perf_counter()
            record, last_batch = self.inner_step()
            outer = None
            if self.updater.needs_validation and (st.step + 1) % c.outer_every == 0:
                outer = self.outer_step(last_batch)
            record["tokens_per_s"] = c.num_batches * c.batch_size * c.block_size / (time.perf_counter() - t0)
            self._log(record)
            if outer is not None:
                self._log(outer)
            st.step += 1
            if st.step % c.eval_interval == 0 or st.step == c.num_epochs:
                ev = self.evaluate()
                self._log(ev)
                st.stopped_early = self._early_stop(ev)
            if st.step % c.checkpoint_interval == 0 or st.step == c.num_epochs or st.stopped_early:
                self.save_checkpoint()
        self.host.emit("run_end", {"run_dir": str(self.run_dir), "step": st.step, "stopped_early": st.stopped_early})
        return st


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after the checkpoint a resumed run restarts from."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    from .io import atomic_write_text

    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))
