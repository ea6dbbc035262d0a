"""The one validated configuration object: defaults, TOML file, presets and CLI overrides.

Names follow the seed model card (``learning_rate``, ``loss_alpha``, ``num_batches`` …).
Every key carries its documentation and its allowed values (an :class:`~wml_framework.api.Option`,
the same spec plugins use for their own options), so that a bad value fails before any work
starts with a message naming the key, the value and what is allowed, and so that
``docs/config.md`` is generated from this file rather than written twice.

Plugin options live in ``plugins``: ``{"focal_wml": {"gamma": 2.0}}``, set as ``--set
focal_wml.gamma=2`` or a ``[plugins.focal_wml]`` TOML table, and validated against what the
plugin declared when a plugin host is at hand.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .api import Option
from .plugin_system.host import PluginHost, get_host, resolve_options
from .plugin_system.validation import (
    ConfigError,
    allowed,
    close_matches,
    validate_value,
)
from .runtime.atomic import atomic_write_text
from .runtime.budget_spec import ALLOWED, ALLOWED_TEACHER, PEERS, parse_budget
from .runtime.placement import device_names
from .runtime.threads import parse_threads

__all__ = ["ConfigError", "PLURAL", "ALIASES", "NUMBER_AS_TEXT", "WMLConfig", "PRESETS", "FIELDS", "from_dict", "load",
           "read_toml", "parse_overrides", "dumps", "save", "markdown_table"]

PLURAL = {"family": "families", "loss": "losses"}
#: old names still accepted on input (the seed card's), mapped to the documented ones
ALIASES = {"num_epochs": "max_steps"}
#: keys whose text value may also be written as a TOML number (``threads = 1``)
NUMBER_AS_TEXT = {"threads"}


def _f(default: Any, help: str, *, low=None, high=None, low_open=False, high_open=False,  # noqa: A002
       choices=None, plugin=None, group="general") -> Any:
    spec = Option("", default, help, kind=type(default), low=low, high=high, low_open=low_open,
                  high_open=high_open, choices=tuple(choices) if choices else None)
    meta = dict(spec=spec, plugin=plugin, group=group)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class WMLConfig:
    """Every setting of a run. Field metadata holds help text and allowed values."""

    # -- what to run -----------------------------------------------------------------
    init: str = _f("bayes", "Peer initializer plugin (`wml plugins`).", plugin="initializer", group="plugins")
    updater: str = _f("mirror", "Peer-weight (ω) updater plugin.", plugin="updater", group="plugins")
    loss: str = _f("wml", "Inner-loop loss plugin.", plugin="loss", group="plugins")
    objective: str = _f("causal", "Training objective plugin: 'causal' (next token), 'masked' (BERT/RoBERTa masking) or 'hybrid' (GPT-BERT: causal and masked next-token steps); docs/objectives.md.", plugin="objective", group="plugins")
    num_peers: int = _f(4, "Number of peers M; targets are N/2 … N/(M+1) of the teacher's N.", low=1, high=16, group="plugins")
    peer_fractions: list = _f([], "Explicit peer sizes as fractions of the teacher (overrides num_peers).", group="plugins")

    # -- data --------------------------------------------------------------------------
    corpus: str = _f("default", "Text file, folder of text files (.txt, .train, .dev, .test), or 'default' (the corpus shipped in the package). A folder with a dev/ folder beside it (the BabyLM layout) takes its held-out text from dev/ (docs/data.md).", group="data")
    val_corpus: str = _f("", "Held-out text (file or folder); empty: a dev/ folder beside the corpus folder, else every k-th chunk of the corpus.", group="data")
    clean_text: bool = _f(True, "Drop CHILDES speaker labels (*MOT:) and Wikipedia headers (= = = T = = =), collapse whitespace (docs/data.md).", group="data")
    vocab_size: int = _f(4096, "Vocabulary of the BPE tokenizer trained when no teacher tokenizer is given.", low=260, high=262144, group="data")
    babylm_track: str = _f("none", "BabyLM 2025 track: 'strict-small' (10M words of text, 100M words in total) or 'strict' (100M, 1B); writes word-milestone checkpoints (chck_1M, …) and checks the word budget, teacher included (docs/babylm.md). 'none': neither.", choices=["none", "strict-small", "strict"], group="data")
    milestone_words: int = _f(1_000_000, "How many words the 'M' of a milestone name stands for (chck_3M at 3 × this); smaller only to try the milestones on a small corpus.", low=1, high=10**12, group="data")
    babylm_git_branches: bool = _f(False, "With a babylm_track: also a git repository of the champion (babylm/hub/) with a branch per milestone (chck_1M, …) and main the final model, the Hub's layout for a submission.", group="data")
    val_fraction: float = _f(0.05, "Fraction of the corpus held out when there is no held-out text (every k-th 2048-token chunk); half of the held-out text tunes ω, half is only evaluated.", low=0.0, high=0.5, low_open=True, group="data")
    block_size: int = _f(128, "Tokens per training sequence.", low=8, high=8192, group="data")
    batch_size: int = _f(8, "Sequences per micro-batch.", low=1, high=4096, group="data")
    num_batches: int = _f(1, "Micro-batches accumulated per optimizer step.", low=1, high=10000, group="data")

    # -- teacher -----------------------------------------------------------------------
    teacher: str = _f("", "Hugging Face model directory of the teacher; empty: train one first.", group="teacher")
    teacher_family: str = _f("auto", "Model family of the teacher trained when none is given; 'auto': llama for a causal objective, roberta for a masked or hybrid one.", plugin="family", group="teacher")
    teacher_n_layer: int = _f(4, "Layers of the trained teacher.", low=1, high=64, group="teacher")
    teacher_n_embd: int = _f(128, "Hidden size of the trained teacher.", low=8, high=8192, group="teacher")
    teacher_n_head: int = _f(4, "Attention heads of the trained teacher.", low=1, high=128, group="teacher")
    teacher_steps: int = _f(1200, "Optimizer steps spent training the teacher.", low=0, high=10_000_000, group="teacher")
    teacher_budget: str = _f("", "How much text the teacher trained when none is given reads, in place of teacher_steps: the syntax of budget, or 'peers' (as many tokens as one peer's budget, never more: the teacher then reads no more words than a peer); teacher_steps then becomes the steps that fit it. Empty: teacher_steps. Ignored with a given teacher (docs/compare.md, Fair budgets).", group="teacher")
    teacher_positions: int = _f(0, "Positions of the teacher trained when none is given (and of its peers): 0 for max(block_size, 256). wml compare sets it to the longest block_size of its methods, so the one teacher trains on the comparison's blocks and still holds every member's (wml_champion's 512).", low=0, high=1_000_000, group="teacher")
    teacher_learning_rate: float = _f(5e-3, "Peak learning rate of the teacher's training.", low=0.0, high=10.0, low_open=True, group="teacher")

    # -- optimisation (seed card names) ------------------------------------------------
    max_steps: int = _f(600, "Optimizer steps of the peers, each over num_batches micro-batches (the seed card calls it num_epochs; that name is accepted too).", low=1, high=10_000_000, group="optimization")
    budget: str = _f("", "How much text each peer trains on, in place of max_steps: '2 epochs', '1.5 epochs', '300000 words', '300k words', '2M words', '1.5M tokens'. Resolved once the data is known (words into tokens by the corpus's tokens per word) into steps = ⌈tokens / (batch_size × block_size × num_batches)⌉, which then set max_steps, lr_decay_iters and omega_decay_iters (= ⌈steps / outer_every⌉). Empty: max_steps as given (docs/compare.md, Fair budgets).", group="optimization")
    budget_steps: int = _f(0, "With a budget: the optimizer steps it should take; num_batches is then scaled (at least 1) so that the budget fills about this many steps of batch_size × block_size × num_batches tokens, keeping a recipe's schedule (warm-up, decay, outer steps) on data of another size. 0: num_batches as given. The wml_champion arm of wml compare sets it to the seed card's 100 steps.", low=0, high=10_000_000, group="optimization")
    learning_rate: float = _f(5e-3, "Peak learning rate of the peers (AdamW).", low=0.0, high=10.0, low_open=True, group="optimization")
    min_lr: float = _f(5e-4, "Learning rate at the end of the cosine decay.", low=0.0, high=10.0, group="optimization")
    warmup_iters: int = _f(20, "Linear learning-rate warm-up steps.", low=0, high=10_000_000, group="optimization")
    lr_decay_iters: int = _f(600, "Step at which the cosine decay reaches min_lr.", low=1, high=10_000_000, group="optimization")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay.", low=0.0, high=10.0, group="optimization")
    beta1: float = _f(0.9, "AdamW β1.", low=0.0, high=1.0, high_open=True, group="optimization")
    beta2: float = _f(0.95, "AdamW β2.", low=0.0, high=1.0, high_open=True, group="optimization")
    grad_clip: float = _f(1.0, "Gradient-norm clip per peer (0 disables).", low=0.0, high=1e6, group="optimization")

    # -- losses --------------------------------------------------------------------------
    loss_alpha: float = _f(0.5, "α: weight of the distillation (KL) term in the WML loss.", low=0.0, high=1.0, group="loss")
    temperature: float = _f(1.0, "Softmax temperature T of the KL terms.", low=0.0, high=100.0, low_open=True, group="loss")
    kd_alpha: float = _f(0.5, "α_kd of teacher-guided distillation (weight of CE; Baby Llama convention).", low=0.0, high=1.0, group="loss")
    kd_temperature: float = _f(2.0, "Temperature of teacher-guided distillation.", low=0.0, high=100.0, low_open=True, group="loss")

    # -- peer weights (outer problem) ---------------------------------------------------
    omega_lr: float = _f(1.0, "Peak mirror-descent step η.", low=0.0, high=1e3, group="omega")
    omega_min_lr: float = _f(0.01, "Final mirror-descent step η after cosine decay.", low=0.0, high=1e3, group="omega")
    omega_warmup_iters: int = _f(2, "Outer steps of linear η warm-up.", low=0, high=10_000_000, group="omega")
    omega_decay_iters: int = _f(60, "Outer step at which η reaches omega_min_lr.", low=1, high=10_000_000, group="omega")
    outer_every: int = _f(10, "Run one outer (ω) update every this many optimizer steps (each costs about 2.5 inner steps).", low=1, high=10_000_000, group="omega")
    hypergradient: str = _f("exact", "'exact' (one-step-unrolled SGD step, Theorem 1), 'exact_adam' (the virtual step of AdamW's preconditioner, method.md §4) or 'first_order' (L_2 at θ).", choices=["exact", "exact_adam", "first_order"], group="omega")
    fixed_omega: list = _f([], "Peer weights for an updater that holds ω fixed (normalised to sum 1).", group="omega")

    # -- peer sizing / pruning -----------------------------------------------------------
    bayesian_init_points: int = _f(10, "Random probes before Bayesian optimization (per peer).", low=1, high=10000, group="init")
    bayesian_n_iter: int = _f(100, "Bayesian-optimization iterations (per peer).", low=0, high=100000, group="init")
    prune_importance: str = _f("l1", "Importance used by structured pruning.", choices=["l1", "l2", "taylor"], group="init")
    layer_bound: float = _f(0.9, "Largest fraction of any layer's units that pruning may remove.", low=0.0, high=1.0, low_open=True, high_open=True, group="init")

    # -- evaluation, early stopping, run control --------------------------------------------
    eval_interval: int = _f(25, "Evaluate held-out loss every this many steps.", low=1, high=10_000_000, group="run")
    eval_batches: int = _f(4, "Held-out micro-batches per evaluation.", low=1, high=100000, group="run")
    enable_early_stopping: bool = _f(True, "Stop when the ensemble's held-out loss stops improving.", group="run")
    early_stopping_patience: int = _f(5, "Evaluations without improvement before stopping.", low=1, high=100000, group="run")
    blimp: str = _f("default", "Folder of minimal-pair .jsonl files, or 'default' (the sample shipped), or 'none' (or '') to skip.", group="run")
    blimp_limit: int = _f(0, "Pairs per paradigm evaluated at the end (0: all).", low=0, high=10_000_000, group="run")
    checkpoint_interval: int = _f(50, "Write a resumable checkpoint every this many steps (of the peers, and of the teacher while it trains).", low=1, high=10_000_000, group="run")
    nonfinite_patience: int = _f(3, "Consecutive steps a model (a peer or the teacher) may skip for a NaN or infinite loss or gradient, and consecutive outer steps the updater may skip for a non-finite ω, before the run stops.", low=1, high=1_000_000, group="run")
    seed: int = _f(1337, "Seed of every random choice (data order, initialisation, Bayesian search).", low=0, high=2**32 - 1, group="run")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu' or 'cuda'.", choices=["auto", "cpu", "cuda"], group="run")
    peer_placement: str = _f("replicate", "'replicate': every peer on this process's device; 'spread': peers on different devices of this process (largest first onto the least-loaded), for peers that do not fit on one device together (docs/distributed.md).", choices=["replicate", "spread"], group="run")
    peer_devices: str = _f("", "Devices for peer_placement = 'spread', separated by commas, e.g. 'cuda:0,cuda:1' (empty: every visible GPU). Not combined with --nproc on GPUs yet.", group="run")
    bf16: bool = _f(True, "bf16 autocast on CUDA (ignored on CPU).", group="run")
    dtype: str = _f("float32", "Precision of the teacher's and peers' weights and of training ('float64': slow, for checking runs against each other, e.g. one process against several).", choices=["float32", "float64"], group="run")
    threads: str = _f("auto", "CPU threads for torch: a number, or 'auto' (times the run's own steps on 1 thread and on every core, keeps the faster, and looks again every 100 steps).", group="run")
    report_to: list = _f([], "Where the run's records are also logged, each per peer and step: 'tensorboard' (event files in <run>/tensorboard/), 'wandb' (Weights & Biases, offline in <run>/wandb/ unless WANDB_MODE says otherwise); each needs its extra installed: pip install 'wml-framework[tensorboard]'.", choices=["tensorboard", "wandb"], group="run")

    # -- plugin options ----------------------------------------------------------------------
    plugins: dict = _f({}, "Plugin options: {name: {option: value}} (`--set name.option=value`, or a [plugins.name] table).", group="plugins")

    # -- API ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "WMLConfig":
        return from_dict({**self.to_dict(), **changes}, check_plugins=False)

    def plugin_options(self, name: str) -> dict:
        """The options given for plugin entry ``name`` (validated when the config was checked
        against a plugin host; the host fills in defaults when it creates the plugin)."""
        return dict(self.plugins.get(name, {}))

    @property
    def num_epochs(self) -> int:
        """The seed card's name for ``max_steps`` (which counts optimizer steps, not epochs)."""
        return self.max_steps

    @property
    def peer_count(self) -> int:
        return len(self.peer_fractions) if self.peer_fractions else self.num_peers


#: named sets of overrides; ``babylm-champion`` is the seed card's champion configuration
PRESETS: dict[str, dict[str, Any]] = {
    "babylm-champion": dict(
        weight_decay=0.1, beta1=0.9, beta2=0.95, bayesian_init_points=10, bayesian_n_iter=100,
        grad_clip=1.0, prune_importance="l1", layer_bound=0.9, batch_size=3, block_size=512,
        max_steps=100, loss_alpha=0.5, num_batches=60, warmup_iters=5, learning_rate=0.05,
        lr_decay_iters=200, min_lr=0.005, enable_early_stopping=True,
        # method.md §4/§5: η from 0.25 down to 0.0025 over the 100/5 = 20 outer steps
        omega_lr=0.25, omega_min_lr=0.0025, outer_every=5, omega_decay_iters=20,
    ),
}

FIELDS = {f.name: f for f in dataclasses.fields(WMLConfig)}


def _spec(name: str) -> Option:
    return dataclasses.replace(FIELDS[name].metadata["spec"], key=name)


def _check_relations(cfg: WMLConfig) -> None:
    if cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"config key 'min_lr': value {cfg.min_lr!r} is not allowed; expected ≤ learning_rate ({cfg.learning_rate!r})")
    if cfg.omega_min_lr > cfg.omega_lr:
        raise ConfigError(f"config key 'omega_min_lr': value {cfg.omega_min_lr!r} is not allowed; expected ≤ omega_lr ({cfg.omega_lr!r})")
    if cfg.teacher_n_embd % cfg.teacher_n_head:
        raise ConfigError(f"config key 'teacher_n_embd': value {cfg.teacher_n_embd!r} is not allowed; "
                          f"expected a multiple of teacher_n_head ({cfg.teacher_n_head})")
    try:
        parse_threads(cfg.threads)
    except ValueError:
        raise ConfigError(f"config key 'threads': value {cfg.threads!r} is not allowed; expected 'auto' or a whole number ≥ 1") from None
    for key, allowed_text in (("budget", ALLOWED), ("teacher_budget", ALLOWED_TEACHER)):
        value = getattr(cfg, key)
        if key == "teacher_budget" and value.strip() == PEERS:
            continue
        try:
            parse_budget(value, allowed_text)
        except ValueError as exc:
            raise ConfigError(f"config key {key!r}: value {value!r} is not allowed; {exc}") from None
    for name in device_names(cfg.peer_devices):
        if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
            raise ConfigError(f"config key 'peer_devices': value {cfg.peer_devices!r} is not allowed; expected "
                              f"devices separated by commas, each 'cpu', 'cuda' or 'cuda:N' (not {name!r})")
    for frac in cfg.peer_fractions:
        if not 0.0 < frac < 1.0:
            raise ConfigError(f"config key 'peer_fractions': value {cfg.peer_fractions!r} is not allowed; "
                              "expected fractions in (0, 1)")
    if cfg.fixed_omega:
        if any(w < 0 or not math.isfinite(w) for w in cfg.fixed_omega) or sum(cfg.fixed_omega) <= 0:
            raise ConfigError(f"config key 'fixed_omega': value {cfg.fixed_omega!r} is not allowed; "
                              "expected non-negative weights with a positive sum")


def _check_plugins(cfg: WMLConfig, host: "PluginHost", dropped: Optional[list] = None) -> None:
    """Plugin names against the registry; plugin options against what each plugin declared
    (defaults filled in, so ``wml config`` shows every option in effect)."""
    for f in dataclasses.fields(cfg):
        kind = f.metadata["plugin"]
        if kind and f.type == "str":
            valid = host.names(kind)
            value = getattr(cfg, f.name)
            if value not in valid and not (value == "auto" == f.default):
                auto = "'auto' or " if f.default == "auto" else ""
                raise ConfigError(f"config key {f.name!r}: value {value!r} is not allowed; "
                                  f"expected {auto}one of the registered {PLURAL.get(kind, kind + 's')}: {', '.join(valid) or '(none)'}"
                                  + host.failure_note(kind, value))
    specs = host.option_specs()
    for name in list(cfg.plugins):
        if name not in specs and dropped is not None:
            dropped.append(name)            # a plugin no longer installed (the run does not use it)
            del cfg.plugins[name]
        elif name not in specs:
            raise ConfigError(f"unknown plugin option namespace {name!r}{close_matches(name, specs)} "
                              f"(plugins with options: {', '.join(sorted(specs)) or 'none'})")
    cfg.plugins = {name: resolve_options(entry, cfg.plugins.get(name, {})) for name, entry in sorted(specs.items())}


def _split_plugin_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``focal_wml.gamma``) and the ``plugins`` table merged into ``plugins``."""
    out: dict[str, Any] = {}
    plugins: dict[str, dict] = {}
    for key, value in values.items():
        if key == "plugins":
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                raise ConfigError(f"config key 'plugins': value {value!r} is not allowed; expected tables of "
                                  "plugin options ([plugins.NAME] with KEY = VALUE)")
            for name, table in value.items():
                plugins.setdefault(name, {}).update(table)
        elif "." in key:
            name, _, option = key.partition(".")
            if not name or not option:
                raise ConfigError(f"config key {key!r} is not of the form PLUGIN.OPTION")
            plugins.setdefault(name, {})[option] = value
        else:
            if key in NUMBER_AS_TEXT and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            out[ALIASES.get(key, key)] = value
            if key in ALIASES and ALIASES[key] in values and values[ALIASES[key]] != value:
                raise ConfigError(f"config keys {key!r} and {ALIASES[key]!r} name the same setting "
                                  f"and disagree ({value!r} vs {values[ALIASES[key]]!r}); give one")
    if plugins:
        out["plugins"] = plugins
    return out


def from_dict(values: Mapping[str, Any], *, check_plugins: bool = True,
              host: Optional["PluginHost"] = None, dropped: Optional[list] = None) -> WMLConfig:
    """Build and validate a config; unknown keys and bad values raise ConfigError.

    With ``check_plugins`` the plugin names and options are checked against ``host`` (default:
    the process-wide one). With a ``dropped`` list, options of plugins that are not installed are
    dropped (their names appended to it) instead of refused: a saved run's config may name them."""
    if check_plugins and host is None:
        host = get_host()
    clean: dict[str, Any] = {}
    for key, value in _split_plugin_keys(values).items():
        if key not in FIELDS:
            raise ConfigError(_unknown_key(key, value, host if check_plugins else None))
        clean[key] = value if key == "plugins" else validate_value(key, _spec(key), value)
    cfg = WMLConfig(**clean)
    _check_relations(cfg)
    if check_plugins:
        _check_plugins(cfg, host, dropped)
    return cfg


def _unknown_key(key: str, value: Any, host: Optional["PluginHost"]) -> str:
    """The message for an unknown key: close config keys, a plugin option of that name, or the
    table a plugin's options belong in."""
    if isinstance(value, Mapping):
        return (f"unknown config key {key!r}: plugin options go in a [plugins.{key}] table "
                f"(or --set {key}.OPTION=VALUE)")
    candidates = list(FIELDS)
    if host is not None:
        try:
            candidates += [f"{name}.{o.key}" for name, e in host.option_specs().items() for o in e.options]
        except Exception:  # noqa: BLE001 - a hint must never replace the error it decorates
            pass
    exact = [c for c in candidates if c.endswith("." + key)]
    hint = f"; did you mean {', '.join(repr(c) for c in exact)}?" if exact else close_matches(key, candidates)
    return f"unknown config key {key!r}{hint} (see docs/config.md)"


def load(path: str | Path | None = None, *, preset: str | None = None,
         overrides: Mapping[str, Any] | None = None, check_plugins: bool = True,
         host: Optional["PluginHost"] = None, dropped: Optional[list] = None) -> WMLConfig:
    """Defaults, then the preset, then the TOML file, then CLI overrides (later wins)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if path:
        data = read_toml(path)
        _strict_types(data, path)
        values = _merge(values, data)
    values = _merge(values, dict(overrides or {}))
    try:
        return from_dict(values, check_plugins=check_plugins, host=host, dropped=dropped)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {path} or the options given)" if path else str(exc)) from None


def _strict_types(data: Mapping[str, Any], path) -> None:
    """A TOML file says what it means: a quoted "0.3" for a number key is a mistake, not a number
    (strings are converted only when they come from the command line)."""
    for key, value in data.items():
        field_ = FIELDS.get(ALIASES.get(key, key))
        spec = None if field_ is None else _spec(field_.name)
        names = spec is not None and spec.type is list and spec.choices      # "wandb" is as clear as ["wandb"]
        if field_ is not None and isinstance(value, str) and spec.type is not str and not names:
            raise ConfigError(f"config key {key!r} in {path}: value {value!r} is a string; write it without quotes "
                              f"(expected {allowed(_spec(field_.name))})")


def _merge(base: dict, new: Mapping[str, Any]) -> dict:
    """Later sources win; an alias given later replaces its documented name given earlier, and
    plugin tables merge option by option."""
    out = dict(base)
    for key, value in new.items():
        target = ALIASES.get(key, key)
        out.pop(target, None)
        out.pop(key, None)
        if key == "plugins" and isinstance(value, Mapping) and isinstance(out.get("plugins"), Mapping):
            merged = {k: dict(v) for k, v in out["plugins"].items()}
            for name, table in value.items():
                merged.setdefault(name, {}).update(table)
            value = merged
        out[target if key in ALIASES else key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["key=value", …]`` from ``--set`` options into a dict (values still strings)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def dumps(cfg: WMLConfig) -> str:
    data = cfg.to_dict()
    plugins = data.pop("plugins")
    if plugins:
        data["plugins"] = plugins  # TOML tables come last
    return tomli_w.dumps(data)


def save(cfg: WMLConfig, path: str | Path) -> None:

    atomic_write_text(Path(path), dumps(cfg))


def markdown_table(host: Optional["PluginHost"] = None) -> str:
    """Every key with its group, default, allowed values and meaning, then every plugin option
    of ``host``'s plugins (docs/config.md)."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    group = None
    for f in dataclasses.fields(WMLConfig):
        if f.name == "plugins":
            continue
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            rows.append(f"| **{group}** | | | |")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = f.metadata["plugin"]
        text = allowed(_spec(f.name)) if not kind else f"a registered {kind}"
        rows.append(f"| `{f.name}` | `{default!r}` | {text} | {f.metadata['spec'].help} |")
    aliases = ", ".join(f"`{old}` → `{new}`" for old, new in ALIASES.items())
    out = "\n".join(rows) + f"\n\nAlso accepted on input: {aliases}.\n"
    if host is not None:
        opt_rows = ["| option | default | allowed | meaning | plugin |", "|---|---|---|---|---|"]
        for name, entry in sorted(host.option_specs().items()):
            for o in entry.options:
                opt_rows.append(f"| `{name}.{o.key}` | `{o.default!r}` | {allowed(o)} | {o.help} | "
                                f"{entry.kind} `{name}` ({entry.plugin}) |")
        out += "\n## Plugin options\n\nSet with `--set NAME.OPTION=VALUE` or a `[plugins.NAME]` table in the TOML file.\n\n"
        out += "\n".join(opt_rows) + "\n" if len(opt_rows) > 2 else "(none of the installed plugins declares options)\n"
    return out
