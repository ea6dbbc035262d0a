"""``wml run`` end to end, as a Python object: :class:`WMLTrainer`.

Data, teacher, peers, training, export; then ``evaluate()`` and ``report()``. Each stage leaves
its result in the run folder before the next starts (config, teacher, a step-0 checkpoint,
metrics, peers), so a run can be resumed wherever it stopped. Every plugin the run needs is
created, and checked, before any work starts.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import config as cfgmod
from .api import Batch, Event, TokenInfo, native_attention
from .config import WMLConfig
from .evaluation.models import resolve_device, train_dtype
from .evaluation.run_reader import read_jsonl
from .evaluation.scoring import EvaluationError, evaluate, headline, write_eval_json
from .plugin_system.host import PluginError, PluginHost
from .report import write_report
from .runtime import checkpoint, distributed, interrupts
from .runtime.placement import SPREAD, check_devices, device_names, rank_device
from .runtime.run_layout import RunLayout
from .runtime.run_lock import locked
from .text.corpus import CorpusError, plan_corpus
from .text.tokenizer import load_tokenizer, with_bos
from .text.tokens import TokenData, prepare_for
from .training.budget import Budget, BudgetError, resolve_run
from .training.callbacks import TrainerControl, TrainerState, dispatch
from .training.export import (
    export,
    print_summary,
    save_model,
    stamp_objective,
    weights_fingerprint,
)
from .training.families import family_for
from .training.loop import TrainingLoop
from .training.milestones import WordMilestones, gather_champion
from .training.objective_fit import (
    ObjectiveMismatch,
    check_attentions,
    check_head,
    check_mask_token,
    check_teacher_predicts,
    default_family,
    probe_config,
    probe_model,
)
from .training.peers import (
    PeerPlan,
    build_peers,
    peers_from_configs,
    plan_peers,
    write_init_files,
)
from .training.run_plugins import RunPlugins, create_plugins
from .training.teacher import (
    check_teacher_dir,
    load_teacher,
    load_teacher_config,
    new_teacher,
    teacher_config,
    train_teacher,
)
from .training.word_budget import WordBudget, planned_words

__all__ = ["MIN_POSITIONS", "RESUME_KEYS", "RunError", "default_run_dir", "RunPlugins", "create_plugins",
           "WMLTrainer", "start", "resume"]

MIN_POSITIONS = 256  # a trained teacher (and its peers) can score evaluation sentences longer than a block
#: keys a resumed run may change (``wml run --resume DIR --set KEY=VALUE``): none changes a model's
#: shape, the data, the tokenizer or a plugin, so the checkpoint stays valid
RESUME_KEYS = ("max_steps", "lr_decay_iters", "budget", "eval_interval", "checkpoint_interval", "enable_early_stopping",
               "early_stopping_patience", "nonfinite_patience", "blimp", "blimp_limit", "device", "bf16", "threads",
               "report_to")


class RunError(ValueError):
    """A run that cannot start or resume; says why."""


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _check_writable(run_dir: Path) -> None:
    """The run folder (or the nearest folder above it that exists) must be writable, before any work."""
    probe = Path(run_dir)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise RunError(f"cannot write to {str(probe)!r} ({exc.strerror or exc}): choose another --out") from None


class WMLTrainer:
    """One run: ``WMLTrainer.from_config(cfg, run_dir).train()`` is ``wml run``.

    ``callbacks`` are :class:`~wml_framework.training.callbacks.TrainerCallback`-like objects; ``host`` is
    the plugin host of this run (a fresh one loaded from entry points by default)."""

    def __init__(self, cfg: WMLConfig, run_dir, *, host: Optional[PluginHost] = None, callbacks: Sequence = (),
                 log=print, resuming: bool = False):
        self.cfg, self.layout = cfg, RunLayout(run_dir)
        self.host = host or PluginHost()
        self.callbacks, self.log, self.resuming = list(callbacks), distributed.main_only(log), resuming
        self.loop: Optional[TrainingLoop] = None
        self.summary: Optional[dict] = None
        self.config_changed = not resuming       # config.toml is written when this is true
        self._given_teacher = None               # (model, tokenizer) of a given teacher, loaded once
        self.budget: Optional[Budget] = None     # the peers' budget, once the data is known
        self.teacher_budget: Optional[Budget] = None

    @classmethod
    def from_config(cls, cfg: WMLConfig, run_dir=None, *, callbacks: Sequence = (),
                    host: Optional[PluginHost] = None, log=print) -> "WMLTrainer":
        """A new run of ``cfg`` in ``run_dir`` (default ``runs/<time>``), which must not hold one."""
        return cls(cfg, run_dir or default_run_dir(), host=host, callbacks=callbacks, log=log)

    @classmethod
    def from_run_dir(cls, run_dir, *, callbacks: Sequence = (), host: Optional[PluginHost] = None,
                     log=print, overrides: Optional[dict] = None) -> "WMLTrainer":
        """Continue the run in ``run_dir`` from its last checkpoint, with its saved config; ``overrides``
        may change the keys of RESUME_KEYS (say, ``max_steps`` to train longer), nothing else."""
        layout = RunLayout(run_dir)
        if not layout.root.is_dir():
            raise RunError(f"{str(layout.root)!r} does not exist")
        if not layout.config.exists():
            raise RunError(f"{str(layout.root)!r} is not a run folder (no config.toml)")
        host = host or PluginHost()
        dropped: list = []
        try:
            cfg = cfgmod.load(layout.config, host=host, dropped=dropped)
        except cfgmod.ConfigError as exc:
            raise RunError(f"{layout.config} cannot be resumed with the installed wml and plugins: {exc}") from None
        for name in dropped:
            log(f"warning: the options of plugin {name!r} in {layout.config.name} are ignored: it is not installed "
                "(the run does not use it)")
        if overrides and cfg.budget:
            steered = sorted(k for k in overrides if cfgmod.ALIASES.get(k, k) in ("max_steps", "lr_decay_iters"))
            if steered:
                raise RunError(f"config key {steered[0]!r} cannot change when a run with budget {cfg.budget!r} resumes: "
                               "the budget sets it; change budget instead (--set budget='3 epochs')")
        if overrides:
            frozen = sorted(k for k in overrides if cfgmod.ALIASES.get(k, k) not in RESUME_KEYS)
            if frozen:
                raise RunError(f"config key {frozen[0]!r} cannot change when a run resumes (its checkpoint was made "
                               f"with {frozen[0]} = {getattr(cfg, cfgmod.ALIASES.get(frozen[0], frozen[0]), None)!r}); "
                               f"keys that can: {', '.join(RESUME_KEYS)}")
            cfg = cfgmod.from_dict({**cfg.to_dict(), **overrides}, host=host)
        trainer = cls(cfg, run_dir, host=host, callbacks=callbacks, log=log, resuming=True)
        trainer.config_changed = bool(overrides)
        return trainer

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    # -- the pipeline --------------------------------------------------------------------
    def train(self) -> dict:
        """Data, teacher, peers, training and export; returns ``summary.json``'s content.

        Holds the run folder's lock throughout. SIGINT, SIGTERM or SIGUSR1 stop it cleanly (a
        training step finishes and is checkpointed first) by raising ``interrupts.Interrupted``."""
        dist = distributed.init_from_env(self.cfg.device)
        dist.check_batch(self.cfg.batch_size)
        plugins = self.prepare()
        with (locked(self.run_dir) if dist.is_main else contextlib.nullcontext()), interrupts.handling():
            if dist.is_main:
                self._check_resumable()
                if self.config_changed:
                    cfgmod.save(self.cfg, self.layout.config)
            dist.barrier()                        # the other ranks start once the folder is checked and locked
            device = rank_device(resolve_device(self.cfg.device), dist, self.cfg.peer_placement, self.cfg.peer_devices)
            torch.manual_seed(self.cfg.seed)
            t_start = time.time()
            teacher, data = self._prepare_teacher(device, plugins)
            if self.budget is not None and self.budget.spec:
                plugins = create_plugins(self.cfg, self.host)   # plugins that read the steps see the budget's
            if dist.broadcast(checkpoint.exists(self.run_dir)):
                loop = self._resume_loop(teacher, data, device, plugins)
            else:
                if dist.is_main:
                    self.layout.metrics.unlink(missing_ok=True)
                self._phase("peers")
                peers = self._build_peers(teacher, data, plugins)
                torch.manual_seed(self.cfg.seed + 5)   # training's RNG starts the same however we got here
                loop = self._loop(peers, teacher, data, device, plugins)
            self.loop = loop
            self._phase("training")
            loop.train()
            self._phase("export")
            budget = self._word_budget(loop)
            self.summary = export(loop, data, self.run_dir, elapsed=time.time() - t_start,
                                  extra={"words": budget.as_dict(), "budget": self.budget.as_dict(),
                                         "teacher_budget": self.teacher_budget and self.teacher_budget.as_dict()})
            if dist.is_main and self.cfg.babylm_track != "none":
                gather_champion(self.run_dir, self.summary["champion"], self.run_dir.name,
                                plugins.objective.scoring, log=self.log,
                                git_branches=self.cfg.babylm_git_branches)
            dist.barrier()                        # every rank returns once the peers are on disk
        print_summary(self.summary, self.log)
        return self.summary

    def train_teacher_only(self) -> Path:
        """Only the data and the teacher stages of :meth:`train` (trained, or loaded when the folder
        has one); returns the teacher's folder. ``wml compare`` gives one teacher to all its runs."""
        dist = distributed.init_from_env(self.cfg.device)
        plugins = self.prepare()
        with locked(self.run_dir), interrupts.handling():
            self._check_resumable()
            if self.config_changed:
                cfgmod.save(self.cfg, self.layout.config)
            torch.manual_seed(self.cfg.seed)
            self._prepare_teacher(rank_device(resolve_device(self.cfg.device), dist, self.cfg.peer_placement, self.cfg.peer_devices), plugins)
        return self.layout.teacher

    def evaluate(self, **options) -> dict:
        """Score every peer, the ensemble and the teacher (``wml eval``); writes ``eval.json``."""

        cfg, dist = self.cfg, distributed.current()
        with (locked(self.run_dir) if dist.is_main else contextlib.nullcontext()), interrupts.handling():
            self._phase("evaluation")
            result = evaluate(self.run_dir, blimp=cfg.blimp, limit=cfg.blimp_limit or None,
                              device=cfg.device, progress=False, log=self.log, host=self.host, **options)
            if dist.is_main:
                write_eval_json(self.layout.eval_json, result)
        return result

    def report(self):
        """Plots and ``report.md`` of the run (``wml report``)."""
        if not distributed.current().is_main:
            return None
        with locked(self.run_dir), interrupts.handling():
            self._phase("report")
            return write_report(self.run_dir)

    def _phase(self, name: str) -> None:
        """Announce a stage of the run to observers (``phase`` events) and callbacks (``on_phase``)."""
        payload = {"phase": name}
        if distributed.current().is_main:
            self.host.emit(Event.PHASE, {**payload, "run_dir": str(self.run_dir), "total_steps": self.cfg.max_steps},
                           log=self.log)
        dispatch(self.callbacks, Event.PHASE, payload, self._phase_state(name), TrainerControl())

    def _phase_state(self, name: str) -> TrainerState:
        """What callbacks are told at a phase: the peers' loop's state once it exists, else the start
        of the loop the phase leads to (the teacher's, the peers'; none yet for ``data``)."""
        if self.loop is not None:
            return self.loop.trainer_state(phase=name)
        teacher, cfg = name == "teacher", self.cfg
        return TrainerState(phase=name, model="teacher" if teacher else "" if name == "data" else "peers",
                            max_steps=cfg.teacher_steps if teacher else cfg.max_steps,
                            num_models=1 if teacher else 0 if name == "data" else cfg.peer_count,
                            run_dir=str(self.run_dir))

    # -- stages ------------------------------------------------------------------------------
    def prepare(self) -> RunPlugins:
        """Every check that needs no work: a new run's folder, corpus, teacher folder, device and
        plugins; only then is the folder created (the config is saved by :meth:`train`). Returns the
        run's plugin objects. :meth:`train` calls it first; called alone, it finds what would stop a
        run (and prints its warnings) without training anything."""
        cfg = self.cfg
        if not self.resuming and self.layout.config.exists() and distributed.launch_rank() == 0:
            raise RunError(f"{str(self.run_dir)!r} already holds a run; continue it with --resume {self.run_dir}")
        if cfg.teacher:
            check_teacher_dir(cfg.teacher)
        try:
            self.corpus = plan_corpus(cfg.corpus, cfg.val_corpus)   # every file checked to be text, before any work
        except CorpusError as exc:
            raise RunError(str(exc)) from None
        device = resolve_device(cfg.device)
        try:
            check_devices(device_names(cfg.peer_devices))
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if cfg.peer_placement == SPREAD and device.type == "cuda" and distributed.launch_world() > 1:
            raise RunError("config key 'peer_placement': value 'spread' is not supported with several processes on "
                           "GPUs yet (each process would need its own set of GPUs before NCCL starts); use one process "
                           "(no --nproc) or peer_placement = 'replicate'")
        plugins = create_plugins(cfg, self.host)
        if cfg.teacher and not self.layout.teacher.exists():
            self._check_given_teacher(plugins)
        elif not cfg.teacher and not self.layout.teacher.exists():
            self._check_teacher_family(plugins)
        _check_writable(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"{'resuming' if self.resuming else 'run folder:'} {self.run_dir}")
        self.log(f"data: {len(self.corpus.train)} training file(s); held-out text: {self.corpus.heldout_from}")
        if plugins.updater.needs_validation and cfg.max_steps < cfg.outer_every and not cfg.budget:
            self.log(f"warning: updater {cfg.updater!r} will not move ω: max_steps ({cfg.max_steps}) is below "
                     f"outer_every ({cfg.outer_every}), so no outer step comes; lower outer_every")
        return plugins

    def _check_resumable(self) -> None:
        """Under the lock: a new run's folder holds no run (another process may have started one),
        and a resumed run has what its checkpoint needs (nothing was removed from it)."""
        layout = self.layout
        if not self.resuming:
            if layout.config.exists():
                raise RunError(f"{str(self.run_dir)!r} already holds a run; continue it with --resume {self.run_dir}")
            return
        if checkpoint.exists(self.run_dir) and not (layout.teacher / "config.json").exists():
            raise RunError(f"{str(self.run_dir)!r} has a checkpoint but no teacher/ folder (was it removed?): "
                           "the checkpoint cannot be resumed without the teacher it was trained with")
        if not checkpoint.exists(self.run_dir):
            trained = [r for r in read_jsonl(layout.metrics) if r.get("kind") == "train"]
            if trained or layout.summary.exists():
                raise RunError(f"{str(self.run_dir)!r} has training records but no checkpoint/ (was it removed?): "
                               "resuming would silently start the training over; start a new run instead")

    def _check_given_teacher(self, plugins: RunPlugins) -> None:
        cfg = self.cfg
        hf_config = load_teacher_config(cfg.teacher)
        try:
            limit = family_for(self.host, hf_config).max_positions(hf_config)
        except ValueError as exc:            # no family handles it: one line, before any work
            raise RunError(str(exc)) from None
        if limit is not None and cfg.block_size > limit:
            raise RunError(f"config key 'block_size': value {cfg.block_size} is not allowed with teacher {cfg.teacher!r}; "
                           f"expected at most its {limit} positions")
        try:
            tokenizer = load_tokenizer(cfg.teacher)
        except (OSError, ValueError, TypeError):
            raise RunError(f"teacher {cfg.teacher!r} has no tokenizer files; save its tokenizer beside the model") from None
        if len(tokenizer) > hf_config.vocab_size:
            raise RunError(f"teacher {cfg.teacher!r}: its tokenizer has {len(tokenizer):,} tokens but its embedding only "
                           f"{hf_config.vocab_size:,} rows; token ids past {hf_config.vocab_size - 1} would index nothing")
        who = f"teacher {cfg.teacher!r}"
        try:
            check_head(cfg.objective, plugins.objective, hf_config, who)
            check_mask_token(cfg.objective, plugins.objective, tokenizer, f"the tokenizer of {who}")
        except ObjectiveMismatch as exc:
            raise RunError(str(exc)) from None
        self._given_teacher = load_teacher(cfg.teacher, dtype=train_dtype(cfg))   # weights that do not fit the config fail here, before work
        try:
            check_attentions(cfg.objective, plugins.objective, self._given_teacher[0], who)
            if plugins.loss.needs_teacher:
                check_teacher_predicts(cfg.objective, plugins.objective, self._given_teacher[0], who)
        except ObjectiveMismatch as exc:
            raise RunError(str(exc)) from None
        self._plan(plugins, hf_config)

    def _check_teacher_family(self, plugins: RunPlugins) -> None:
        """The family of the teacher a run trains exists and fits the objective (head, attentions),
        told in one line before any work, by a one-layer model of the family."""
        cfg, objective = self.cfg, plugins.objective
        name = default_family(cfg, objective)
        if name not in self.host.names("family"):
            raise RunError(f"config key 'teacher_family': {name!r} (for objective {cfg.objective!r}) is not a "
                           f"registered family; registered: {', '.join(self.host.names('family'))}"
                           + self.host.failure_note("family", name))
        config = probe_config(self.host.create("family", name))
        who = f"a {name} teacher (teacher_family {cfg.teacher_family!r})"
        try:
            check_head(cfg.objective, objective, config, who)
            check_attentions(cfg.objective, objective, probe_model(config), who)
        except ObjectiveMismatch as exc:
            raise RunError(str(exc)) from None

    def _plan(self, plugins: RunPlugins, hf_config, calibration: Optional[Batch] = None) -> PeerPlan:
        """The initializer's check of the peers asked for. Before the data is ready, a placeholder
        stands for the calibration batch ``wml run`` always passes (so an initializer that needs one,
        like ``l1`` with ``taylor`` importance, is not refused for lack of it)."""
        family = family_for(self.host, hf_config)
        if calibration is None:
            calibration = Batch(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
        try:
            return plan_peers(self.cfg, plugins.initializer, family, hf_config, calibration)
        except ValueError as exc:
            raise RunError(str(exc)) from None

    def _prepare_teacher(self, device, plugins: RunPlugins):
        """The teacher model and the token data, training a teacher when none was given."""
        cfg, log, saved, dist = self.cfg, self.log, self.layout.teacher, distributed.current()
        self._phase("data")
        if dist.is_main:
            source = "saved" if (saved / "config.json").exists() else "given" if cfg.teacher else "trained"
            dist.broadcast(source)
            teacher, data = self._main_teacher(device, plugins)
            dist.barrier()
            return teacher, data
        source = dist.broadcast(None)             # rank 0 prepares the data (cache) and the teacher first
        self._given_teacher = None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()         # one voice per run: rank 0's
        dist.barrier()
        teacher, tokenizer = load_teacher(saved, dtype=train_dtype(cfg))
        if source == "given":                     # the tokenizer rank 0 tokenized with: the same cache entry
            tokenizer = with_bos(load_tokenizer(cfg.teacher))
        data = prepare_for(cfg, tokenizer=None if source == "trained" else tokenizer, log=log, plan=self.corpus,
                           mask_token=plugins.objective.needs_mask_token)
        self._resolve_budget(data, plugins, quiet=True)
        return teacher.to(device).eval(), data

    def _main_teacher(self, device, plugins: RunPlugins):
        cfg, log, saved = self.cfg, self.log, self.layout.teacher
        if (saved / "config.json").exists():
            checkpoint.remove(self.run_dir, checkpoint.TEACHER)   # a kill after the save, before the removal
            teacher, tokenizer = load_teacher(saved, dtype=train_dtype(cfg))
            data = prepare_for(cfg, tokenizer=tokenizer, log=log, plan=self.corpus)
            self._resolve_budget(data, plugins)
            return teacher.to(device).eval(), data
        if cfg.teacher:
            teacher, tokenizer = self._given_teacher or load_teacher(cfg.teacher, dtype=train_dtype(cfg))
            self._given_teacher = None
            if tokenizer is None:
                raise RunError(f"teacher {cfg.teacher!r} has no tokenizer files; save its tokenizer beside the model")
            tokenizer = with_bos(tokenizer)  # exported peers then score the first word in the BabyLM pipeline too
            data = prepare_for(cfg, tokenizer=tokenizer, log=log, plan=self.corpus)
            cfg = self._resolve_budget(data, plugins)
            self._check_word_plan(data)
        else:
            data = prepare_for(cfg, log=log, plan=self.corpus, mask_token=plugins.objective.needs_mask_token)
            cfg = self._resolve_budget(data, plugins)
            self._check_word_plan(data)
            family_name = default_family(cfg, plugins.objective)
            family = self.host.create("family", family_name)
            hf_config = teacher_config(family, cfg, data.tokenizer, max_positions=max(cfg.block_size, MIN_POSITIONS, cfg.teacher_positions))
            self._plan(plugins, hf_config)  # an impossible peer request fails before the teacher trains
            self._phase("teacher")
            teacher = new_teacher(hf_config, cfg.seed).to(train_dtype(cfg))
            n = sum(p.numel() for p in teacher.parameters())
            log(f"teacher: training a {family_name} teacher of {n:,} parameters for {cfg.teacher_steps} steps "
                f"(objective {cfg.objective})")
            teacher = train_teacher(teacher, data, cfg, device, host=self.host, run_dir=self.run_dir, log=log,
                                    callbacks=self.callbacks)
            stamp_objective(teacher, cfg.objective, cfg.plugin_options(cfg.objective), plugins.objective)
        save_model(teacher.cpu(), data.tokenizer, saved)
        checkpoint.remove(self.run_dir, checkpoint.TEACHER)   # the saved teacher supersedes them
        return teacher.to(device).eval(), data

    def _build_peers(self, teacher, data: TokenData, plugins: RunPlugins) -> list:
        """Rank 0 sizes or prunes the peers and writes the init files; every rank gets its peers."""
        dist = distributed.current()
        peers = ([p.to(train_dtype(self.cfg)) for p in self._initialize_peers(teacher, data, plugins)]
                 if dist.is_main else None)
        if not dist.active:
            return peers
        built = dist.broadcast(None if peers is None else [(p.config.to_dict(), {k: v.cpu() for k, v in
                                                                                p.state_dict().items()}) for p in peers])
        if peers is None:
            peers = [p.to(train_dtype(self.cfg)) for p in peers_from_configs([c for c, _ in built])]
            for peer, (_, state) in zip(peers, built):
                peer.load_state_dict(state)
        return peers

    def _calibration_batch(self, teacher, data: TokenData, objective) -> Batch:
        """A training batch as the objective makes them (masked inputs for a masked run), at the first
        step where it asks for the teacher's own attention: an initializer (``l1``'s taylor importance)
        calls the teacher plainly, and a causal batch read bidirectionally would show it each answer."""
        cfg, native = self.cfg, native_attention(teacher)
        step = next((s for s in range(1000) if objective.attention(s) == native), 0)
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        block = data.blocks("train", cfg.batch_size, cfg.block_size, gen)
        x, y = objective.batch(block, step, gen, TokenInfo.of(data.tokenizer, data.vocab_size))
        return Batch(x, y)

    def _initialize_peers(self, teacher, data: TokenData, plugins: RunPlugins) -> list:
        cfg = self.cfg
        calibration = self._calibration_batch(teacher, data, plugins.objective)
        device = next(teacher.parameters()).device
        plan = self._plan(plugins, teacher.config, calibration)
        try:
            result, trace = build_peers(cfg, plan, teacher.cpu(), calibration=calibration, log=self.log)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        finally:
            teacher.to(device)  # .cpu() moved it in place; training and evaluation need it back
        trace = {**trace, "initial_weights_sha256": [weights_fingerprint(p) for p in result.peers]}
        write_init_files(self.run_dir, result, trace)
        return result.peers

    def _loop(self, peers, teacher, data, device, plugins: RunPlugins) -> TrainingLoop:
        cfg = self.cfg
        milestones = None
        if cfg.babylm_track != "none":
            milestones = WordMilestones(self.run_dir, cfg.babylm_track, cfg.milestone_words, data.tokenizer,
                                        cfg.objective, cfg.plugin_options(cfg.objective), plugins.objective,
                                        log=self.log)
        return TrainingLoop(cfg, self.host, peers, data, self.run_dir, device, loss=plugins.loss,
                            updater=plugins.updater, teacher=teacher, log=self.log, callbacks=self.callbacks,
                            objective=plugins.objective, milestones=milestones)

    def _resolve_budget(self, data: TokenData, plugins: RunPlugins, quiet: bool = False) -> WMLConfig:
        """Once the data is known: the budgets in steps, and ``self.cfg`` with them (max_steps, both
        decays, teacher_steps); everything after reads the resolved values. Returns the new config."""
        batches_before = self.cfg.num_batches
        try:
            self.cfg, self.budget, self.teacher_budget = resolve_run(self.cfg, len(data.train), data.corpus_words)
        except (BudgetError, cfgmod.ConfigError) as exc:
            raise RunError(str(exc)) from None
        cfg, log = self.cfg, (lambda m: None) if quiet else self.log
        for who, b in (("peers", self.budget), ("teacher", self.teacher_budget)):
            if b is not None and b.spec:
                words = "" if b.words is None else f", about {b.words:,} words"
                log(f"budget: {who} {b.spec!r} = {b.steps:,} steps of {b.tokens_per_step:,} tokens = {b.tokens:,} "
                    f"tokens ({b.epochs:g} epochs{words})")
        if cfg.num_batches != batches_before:
            log(f"budget: num_batches {batches_before} → {cfg.num_batches}, so the budget takes about "
                f"{cfg.budget_steps} steps (budget_steps)")
        if self.budget.spec and plugins.updater.needs_validation and cfg.max_steps < cfg.outer_every:
            log(f"warning: updater {cfg.updater!r} will not move ω: budget {cfg.budget!r} is {cfg.max_steps} steps, "
                f"below outer_every ({cfg.outer_every}), so no outer step comes; lower outer_every")
        return cfg

    def _teacher_words(self) -> Optional[int]:
        """The words the run's own teacher trained on (its last record), None for a given teacher."""
        if self.cfg.teacher:
            return None
        trained = [r for r in read_jsonl(self.layout.teacher_metrics) if r.get("kind") == "train"]
        return trained[-1].get("words") if trained else 0

    def _word_budget(self, loop: TrainingLoop) -> WordBudget:
        return WordBudget(self.cfg.babylm_track, self._teacher_words(), loop.state.words, len(loop.peers))

    def _check_word_plan(self, data: TokenData) -> None:
        """The words the configuration plans to train on, teacher included, in one line; a warning
        before any training when they exceed the track's budget."""
        cfg = self.cfg
        if data.corpus_words is None:
            return
        step_tokens = cfg.batch_size * cfg.block_size
        peers = planned_words(cfg.max_steps, step_tokens * cfg.num_batches, data.corpus_words, len(data.train))
        teacher = None if cfg.teacher else planned_words(cfg.teacher_steps, step_tokens, data.corpus_words,
                                                         len(data.train))
        plan = WordBudget(cfg.babylm_track, teacher, peers, cfg.num_peers)
        self.log(f"data: {data.corpus_words:,} words of training text; planned {plan.line()[len('words trained on: '):]}"
                 .replace(" is within", " would be within").replace(" is OVER", " would be OVER"))
        if plan.budget is not None and plan.total > plan.budget:
            self.log(f"warning: the plan trains on about {plan.total:,} words, over the {cfg.babylm_track} track's "
                     f"{plan.budget:,} (teacher included, as the BabyLM rules count it); lower max_steps or "
                     "teacher_steps, or give a --teacher trained within the rules")
        if cfg.babylm_track != "none" and data.corpus_words > plan.budget // 10:
            self.log(f"warning: the training text has {data.corpus_words:,} words, more than the "
                     f"{cfg.babylm_track} track's {plan.budget // 10:,}")

    def _resume_loop(self, teacher, data, device, plugins: RunPlugins) -> TrainingLoop:
        try:
            state = checkpoint.load(self.run_dir, warn=self.log)
        except checkpoint.CheckpointError as exc:
            raise RunError(str(exc)) from None
        peers = [p.to(train_dtype(self.cfg)) for p in peers_from_configs(state["peer_configs"])]
        loop = self._loop(peers, teacher, data, device, plugins)
        loop.resume(state)                       # its state, and metrics.jsonl cut back to its step
        self.log(f"resumed at step {loop.state.step}/{self.cfg.max_steps}")
        return loop


# -- the command line's entry points ---------------------------------------------------------

def start(cfg: WMLConfig, out_dir=None, log=print, *, host: Optional[PluginHost] = None,
          callbacks: Sequence = ()) -> Path:
    """A new run, trained, evaluated and reported (``wml run``)."""
    trainer = WMLTrainer.from_config(cfg, out_dir, host=host, callbacks=callbacks, log=log)
    return _finish(trainer)


def resume(run_dir, log=print, *, host: Optional[PluginHost] = None, callbacks: Sequence = (),
           overrides: Optional[dict] = None) -> Path:
    """Continue an interrupted run from its last checkpoint (``wml run --resume``); ``overrides``
    may change the keys of RESUME_KEYS."""
    trainer = WMLTrainer.from_run_dir(run_dir, host=host, callbacks=callbacks, log=log, overrides=overrides)
    return _finish(trainer)


def _finish(trainer: WMLTrainer) -> Path:
    trainer.train()
    try:
        result = trainer.evaluate()  # after the peers are safely on disk: a failure here loses no training
    except (EvaluationError, PluginError) as exc:
        trainer.report()             # the training's plots and tables, without the evaluation
        raise EvaluationError(f"{exc} — training finished and every peer is saved in {trainer.run_dir}; once this "
                              f"is fixed, run: wml eval {trainer.run_dir} && wml report {trainer.run_dir}") from None
    for name in result["models"]:
        trainer.log(f"  {name:<10} {headline(result, name)}")
    report = trainer.report()
    if report is not None:
        trainer.log(f"report: {report.path}")
    return trainer.run_dir
