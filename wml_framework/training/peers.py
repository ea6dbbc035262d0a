"""Building peers from a teacher: the one path both ``wml run`` and ``wml init-peers`` take.

The initializer plugin is checked against the teacher's config before any weights are touched;
its result is written as ``init_table.json`` (one row per peer) and ``init_trace.json`` (one
format: who built the peers, from what, how long it took, and the initializer's own trace).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..api import Batch, InitResult, build_model, peer_targets
from ..config import WMLConfig
from ..runtime.atomic import atomic_write_json
from ..runtime.run_layout import RunLayout

__all__ = ["PeerPlan", "plan_peers", "build_peers", "write_init_files", "peers_from_configs"]


@dataclass
class PeerPlan:
    """What an initializer is asked for, known before any weights are loaded."""

    initializer: object
    family: object
    teacher_config: object
    targets: list
    n_teacher: int


def plan_peers(cfg: WMLConfig, initializer, family, teacher_config, calibration: Optional[Batch] = None) -> PeerPlan:
    """Targets N/2 … N/(M+1) (or ``peer_fractions``) of the teacher's N, checked by the
    initializer's optional ``check`` before any work; ValueError says what is impossible."""
    n_teacher = family.count_parameters(teacher_config)
    targets = peer_targets(n_teacher, None if cfg.peer_fractions else cfg.num_peers, cfg.peer_fractions or None)
    check = getattr(initializer, "check", None)
    if callable(check):
        check(teacher_config, family, targets, calibration=calibration)
    return PeerPlan(initializer, family, teacher_config, targets, n_teacher)


def build_peers(cfg: WMLConfig, plan: PeerPlan, teacher, *, calibration: Optional[Batch] = None,
                log=print) -> tuple[InitResult, dict]:
    """Run the initializer; returns its result and the ``init_trace.json`` document."""
    loaded = sum(p.numel() for p in teacher.parameters())
    if loaded != plan.n_teacher:
        raise ValueError(f"family {plan.family.name!r} counts {plan.n_teacher:,} parameters for the teacher's "
                         f"config, but the loaded model has {loaded:,}")
    log(f"peers: {cfg.init} initialization of {len(plan.targets)} peers, targets {plan.targets} "
        f"(teacher {plan.n_teacher:,})")
    t0 = time.perf_counter()
    result = plan.initializer.build(teacher, plan.family, plan.targets, calibration=calibration, seed=cfg.seed)
    seconds = time.perf_counter() - t0
    if len(result.peers) != len(plan.targets):
        raise ValueError(f"initializer {cfg.init!r} built {len(result.peers)} peers for {len(plan.targets)} targets")
    for row in result.rows:
        log(f"  peer_{row['peer']}: {row['shape']}  {row['parameters']:,} params (target {row['target']:,}, "
            f"error {100 * row['rel_error']:.2f}%)")
        if row.get("note"):      # an initializer's remark on this peer (bayes: shared layers/heads/width)
            log(f"    {row['note']}")
    log(f"peers: built in {seconds:.1f}s")
    trace = dict(initializer=cfg.init, family=plan.family.name, teacher_parameters=plan.n_teacher,
                 teacher_shape=plan.family.shape_string(plan.teacher_config), seed=cfg.seed,
                 seconds=round(seconds, 3), trace=result.trace)
    return result, trace


def write_init_files(out_dir: Path, result: InitResult, trace: dict) -> None:
    layout = RunLayout(out_dir)
    atomic_write_json(layout.init_table, result.rows)
    atomic_write_json(layout.init_trace, trace)


def peers_from_configs(configs: list) -> list:
    """Fresh models of saved peer configs (a checkpoint's), to load the saved weights into."""
    from transformers import AutoConfig

    return [build_model(AutoConfig.for_model(**conf)) for conf in configs]
