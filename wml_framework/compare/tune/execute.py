"""Running a tuning: the shared teacher, then each method's trials, ``--jobs`` at a time, then
the tables, ``best.toml`` files and ``tuned.json``.

The first trials started are the pending ones (written, not finished: an interrupted one resumes
from its checkpoint, with its values) topped up with new suggestions; after that, each time a trial
ends the next is suggested with the running ones as pending points (asynchronous: no slot waits
for the slowest trial of a batch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from ...plugin_system.host import PluginHost
from ...runtime.run_layout import RunLayout
from ..execute import check_saved_config, shared_teacher
from ..jobs import Launch, Task, run_tasks
from ..methods import Method
from .outputs import best_trial, write_method_outputs, write_tuned
from .plan import TunePlan, check_or_save
from .search import Observation, suggest
from .space import settings_for
from .trial import Trial, read_trial, run_trial, write_trial

__all__ = ["read_trials", "run_tune"]


def read_trials(plan: TunePlan, method: Method) -> list[Trial]:
    """Every trial of ``method`` on disk, in order."""
    folder = plan.method_dir(method) / "trials"
    found = (read_trial(p) for p in sorted(folder.glob("trial-*")) if p.is_dir()) if folder.is_dir() else ()
    return sorted((t for t in found if t is not None), key=lambda t: t.index)


def _check_folders(plan: TunePlan, host: PluginHost) -> None:
    """Every trial folder this tuning would resume was started with its own trial's configuration."""
    for method in plan.methods:
        for t in read_trials(plan, method):
            if RunLayout(t.run_dir).config.is_file():
                check_saved_config(t.run_dir, plan.trial_config(method, t.values, host=host), host,
                                   f"trial {method.label}/{t.name}")


def _next_batch(plan: TunePlan, method: Method, trials: list[Trial], room: int, retry: set,
                attempted: set) -> list[Trial]:
    """Up to ``room`` trials to start: the pending ones (and the failed ones in ``retry``) not yet run
    in this session, then new ones suggested (their trial.json written). Trials started in this
    session and still running count as pending points for the suggestions (the constant liar)."""
    waiting = [t for t in trials if t.index not in attempted and (t.status == "pending" or t.index in retry)]
    batch = waiting[:room]
    room = min(room - len(batch), plan.trials - len(trials))
    if room > 0:
        running = [t for t in trials if t.index in attempted and t.status == "pending"]
        done = [Observation(t.values, t.objective) for t in trials if t.status == "done"]
        failed = [Observation(t.values) for t in trials if t.status == "failed" and t not in waiting]
        start = max((t.index for t in trials), default=-1) + 1
        chosen = suggest(plan.spaces[method.label], seed=plan.seed, label=method.label, start=start, count=room,
                         random_trials=plan.random_trials(), finished=done, failed=failed,
                         pending=[Observation(t.values) for t in waiting + running])
        for k, (values, origin) in enumerate(chosen):
            run_dir = plan.trial_dir(method, start + k)
            write_trial(run_dir, start + k, values, origin, settings_for(values, plan.base), plan.seed)
            batch.append(read_trial(run_dir))
    return batch


def _describe(values: dict, keys=None) -> str:
    keys = keys or list(values)
    return ", ".join(f"{k}={values[k]:.4g}" if isinstance(values[k], float) else f"{k}={values[k]}" for k in keys)


def run_tune(plan: TunePlan, *, make_host: Callable[[], PluginHost] = PluginHost, say: Callable[[str], None] = print,
             launch: Launch = Launch(), retry_failed: bool = False) -> dict:
    """Run (or continue) every method's trials; write the tables, ``best.toml`` and ``tuned.json``.
    Returns ``{label: best Trial or None}``. ``launch`` runs ``jobs`` trials side by side."""
    continuing = check_or_save(plan)
    host = make_host()
    _check_folders(plan, host)
    say(f"tune: {', '.join(m.label for m in plan.methods)}, {plan.trials} trials each "
        f"({plan.random_trials()} random, then Bayesian optimization), seed {plan.seed}, "
        f"{launch.jobs} at a time, in {plan.out}" + (" (continuing)" if continuing else ""))
    shared_teacher(plan.teacher_plan, make_host, say)
    bests: dict = {}
    for method in plan.methods:
        say(f"{method.label}: search space {plan.spaces[method.label].text()}")
        trials = read_trials(plan, method)
        retry = {t.index for t in trials if retry_failed and t.status == "failed"
                 and not RunLayout(t.run_dir).summary.is_file()}          # a trial whose run failed, not its loss
        attempted: set = set()        # started in this session: a trial that fails again stays failed

        def start(trials: list, room: int) -> list:
            tasks = []
            for t in _next_batch(plan, method, trials, room, retry, attempted):
                attempted.add(t.index)
                config = plan.trial_config(method, t.values, host=host).to_dict()
                say(f"  {method.label}/{t.name} ({t.origin}{', resuming' if RunLayout(t.run_dir).config.is_file() else ''}):"
                    f" {_describe(t.values, plan.spaces[method.label].keys)}")
                # a trial in another process loads the installed plugins (a make_host need not pickle)
                tasks.append(Task(f"{method.label}/{t.name}", run_trial,
                                  (str(t.run_dir), config, None if launch.parallel else make_host)))
            return tasks

        def refill():
            """A slot is free: the next trial, suggested with the running ones as pending."""
            more = start(read_trials(plan, method), 1)
            return more[0] if more else None

        started = time.time()
        run_tasks(start(read_trials(plan, method), launch.jobs), launch, folder=plan.method_dir(method), say=say,
                  on_done=lambda task, failure: say(_done_line(plan, method, task, failure, started)), refill=refill)
        trials = read_trials(plan, method)
        table = write_method_outputs(plan, method, trials)
        best = best_trial(trials)
        bests[method.label] = (method, best)
        say("\n" + table)
        say(f"{method.label}: best {best.name}, objective {best.objective:.4f} ({_describe(best.values, plan.spaces[method.label].keys)}); "
            f"{plan.method_dir(method) / 'best.toml'}" if best else f"{method.label}: no trial finished")
    path = write_tuned(plan, bests)
    say(f"tune: {path}")
    return {label: best for label, (_, best) in bests.items()}


def _done_line(plan: TunePlan, method: Method, task: Task, failure: Optional[str], started: float) -> str:
    trial = read_trial(Path(task.args[0]))
    if failure or trial is None or trial.status != "done":
        return (f"  {task.name}: FAILED ({failure or (trial and trial.failure)}); the tuning goes on without it "
                f"(its log: {Path(task.args[0]) / 'wml.log'})")
    wall = trial.wall_s or time.time() - started
    return f"  {task.name}: objective {trial.objective:.4f} in {wall:.0f} s"
