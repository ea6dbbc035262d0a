"""bf16 autocast covers the peers' and the teacher's forwards, and nothing after them.

The trainer's autocast is bf16 on CUDA only; these tests put CPU bf16 autocast in its place (the
same ``torch.autocast`` machinery) so that the GPU path's bookkeeping is exercised on any machine.

Would catch: one ``torch.autocast`` object entered twice (the teacher's logits computed inside the
peers' block, as the trainer once did): ``__enter__`` stores the state it replaces on the object,
so the inner exit restores "on" and bf16 stays on for the rest of the process, through the outer
step and the final scoring; and an outer step or evaluation run inside the peers' autocast block.
"""

from __future__ import annotations

import pytest
import torch
from run_helpers import tiny_config

from wml_framework import hookimpl
from wml_framework.plugin_system.host import PluginHost
from wml_framework.runner import WMLTrainer
from wml_framework.training import loop as trainer


def cpu_bf16(device, bf16):
    """A factory of fresh CPU bf16 autocast contexts (what ``autocast_for`` gives on CUDA)."""
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def one_shared_cpu_bf16(device, bf16):
    """The broken pattern: every ``with`` enters the same object."""
    shared = torch.autocast("cpu", dtype=torch.bfloat16)
    return lambda: shared


class Watcher:
    """A mirror updater and a kd loss that note whether autocast is on when they are called."""

    def __init__(self):
        self.in_outer, self.peer_dtypes, self.teacher_dtypes = [], set(), set()

    @hookimpl
    def wml_register_updaters(self, register):
        from wml_plugins.updaters.mirror import MirrorUpdater

        watcher = self

        class Watching(MirrorUpdater):
            def step(self, ctx):
                watcher.in_outer.append(torch.is_autocast_enabled("cpu"))
                return super().step(ctx)

        register("watching", lambda cfg, m: Watching.from_config(cfg, m))

    @hookimpl
    def wml_register_losses(self, register):
        from wml_plugins.losses.kd import KDLoss

        watcher = self

        class WatchingKD(KDLoss):
            def __call__(self, logits, labels, omega, teacher_logits=None):
                if not omega.requires_grad:
                    watcher.peer_dtypes.add(logits[0].dtype)
                    watcher.teacher_dtypes.add(teacher_logits.dtype)
                return super().__call__(logits, labels, omega, teacher_logits=teacher_logits)

        register("watching_kd", WatchingKD.from_config)


def _train_with(factory, tmp_path, corpus, monkeypatch) -> Watcher:
    monkeypatch.setattr(trainer, "autocast_for", factory)
    watcher, host = Watcher(), PluginHost()
    host.register(watcher, "watcher")
    cfg = tiny_config(corpus, host, loss="watching_kd", updater="watching", max_steps=4, outer_every=2, num_batches=2,
                      teacher_steps=4, eval_interval=2, blimp="", lr_decay_iters=4)
    try:
        WMLTrainer.from_config(cfg, tmp_path / "run", host=host, log=lambda m: None).train()
    finally:
        after = torch.is_autocast_enabled("cpu")
        torch.set_autocast_enabled("cpu", False)     # a leak must not spill into the other tests
    watcher.after = after
    return watcher


def test_bf16_autocast_covers_the_forwards_and_is_off_for_the_outer_step_and_after(tmp_path, corpus, monkeypatch):
    watcher = _train_with(cpu_bf16, tmp_path, corpus, monkeypatch)
    assert watcher.peer_dtypes == {torch.bfloat16} and watcher.teacher_dtypes == {torch.bfloat16}
    assert watcher.in_outer and not any(watcher.in_outer), watcher.in_outer
    assert not watcher.after


def test_the_trainer_never_nests_its_autocast_so_even_one_shared_object_would_not_leak(tmp_path, corpus, monkeypatch):
    """Why a second test: the factory alone would hide a return of the nesting; a shared object exposes it."""
    watcher = _train_with(one_shared_cpu_bf16, tmp_path, corpus, monkeypatch)
    assert not any(watcher.in_outer) and not watcher.after


def test_a_shared_autocast_object_entered_twice_does_leak():
    """The mechanism the tests above guard against, shown on torch itself (so they can fail)."""
    shared = torch.autocast("cpu", dtype=torch.bfloat16)
    try:
        with shared:
            with shared:
                pass
        assert torch.is_autocast_enabled("cpu")
    finally:
        torch.set_autocast_enabled("cpu", False)


@pytest.mark.parametrize("device, bf16", [("cuda", True), ("cpu", True), ("cuda", False)])
def test_autocast_for_gives_a_fresh_context_every_time(device, bf16):
    factory = trainer.autocast_for(torch.device(device), bf16)
    assert factory() is not factory()
