"""Running independent members (comparison runs, tuning trials) N at a time, here or on a cluster.

A member is a :class:`Task`: a module-level function and plain arguments, so it can be sent to
another process (``--jobs N``: a pool of N local processes, the cores divided between them) or to a
SLURM job through submitit (``--launcher slurm``). Every member writes an ordinary run folder, so
whatever stops it (Ctrl-C, a scheduler's preemption) leaves a checkpoint the same command resumes.

``launcher = "submitit-local"`` runs each member as a submitit job on this machine: the cluster
path without a cluster (submitit's own local executor), for trying a SLURM setup before queueing.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ..config import ConfigError

__all__ = ["Task", "Launch", "LAUNCHERS", "SLURM_KEYS", "threads_per_member", "make_executor", "run_tasks"]

LAUNCHERS = ("local", "slurm", "submitit-local")
#: options of ``--launcher slurm`` (``--slurm KEY=VALUE``), with what each becomes in submitit
SLURM_KEYS = {"partition": "slurm_partition", "gpus_per_member": "gpus_per_node", "time_min": "timeout_min",
              "cpus_per_member": "cpus_per_task", "mem_gb": "mem_gb", "account": "slurm_account",
              "qos": "slurm_qos", "constraint": "slurm_constraint"}
_INT_KEYS = ("gpus_per_member", "time_min", "cpus_per_member", "mem_gb")
#: how often a cluster job's state is asked for (a scheduler is not to be hammered)
POLL_S = 5.0


@dataclass(frozen=True)
class Task:
    """One member: ``fn(*args, threads=T)`` returns a one-line failure, or None when it finished.
    ``fn`` must be a module-level function (it is pickled to reach another process)."""

    name: str
    fn: Callable[..., Optional[str]]
    args: tuple = ()


@dataclass(frozen=True)
class Launch:
    """How members run: ``jobs`` at a time, by ``launcher``; ``slurm`` holds the SLURM_KEYS options."""

    jobs: int = 1
    launcher: str = "local"
    slurm: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.jobs < 1:
            raise ConfigError(f"--jobs: value {self.jobs} is not allowed; expected at least 1")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher: value {self.launcher!r} is not allowed; expected one of {', '.join(LAUNCHERS)}")
        for key, value in self.slurm.items():
            if key not in SLURM_KEYS:
                raise ConfigError(f"--slurm: option {key!r} is unknown; valid: {', '.join(SLURM_KEYS)}")
            if key in _INT_KEYS and (not isinstance(value, int) or value < (0 if key == "gpus_per_member" else 1)):
                raise ConfigError(f"--slurm: {key} = {value!r} is not allowed; expected a whole number"
                                  + (" ≥ 0" if key == "gpus_per_member" else " ≥ 1"))
        if self.slurm and self.launcher == "local":
            raise ConfigError("--slurm options need --launcher slurm (or submitit-local)")

    @classmethod
    def parse(cls, jobs: int, launcher: str, slurm_options: Sequence[str] = ()) -> "Launch":
        """From the command line: ``--slurm partition=gpu --slurm time_min=120``."""
        values: dict = {}
        for text in slurm_options:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--slurm: {text!r} is not KEY=VALUE (keys: {', '.join(SLURM_KEYS)})")
            key, value = key.strip(), value.strip()
            if key in _INT_KEYS:
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(f"--slurm: {key} = {value!r} is not allowed; expected a whole number") from None
            values[key] = value
        return cls(jobs, launcher, values)

    @property
    def parallel(self) -> bool:
        return self.jobs > 1 or self.launcher != "local"


def threads_per_member(launch: Launch, cores: Optional[int] = None) -> Optional[int]:
    """Torch threads each member gets: the cores divided between the local jobs, a SLURM job's
    ``cpus_per_member``; None in-process (the config's ``threads`` then decides)."""
    if launch.launcher == "slurm":
        return int(launch.slurm.get("cpus_per_member", 1))
    if not launch.parallel:
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // launch.jobs)


def run_tasks(tasks: Sequence[Task], launch: Launch, *, folder: Path, say: Callable[[str], None] = print,
              on_done: Optional[Callable[[Task, Optional[str]], None]] = None,
              refill: Optional[Callable[[], Optional[Task]]] = None) -> dict:
    """Run every task, ``launch.jobs`` at a time; ``on_done(task, failure)`` as each ends (in this
    process, in the order they end). Once ``tasks`` are all started, ``refill()`` is asked for the next
    task whenever one ends (None: no more), so a slot never waits for the slowest member of a batch
    (asynchronous Bayesian optimization suggests a trial with the running ones as pending).
    Returns {name: failure or None}. A signal to this process stops the members (each writes its
    checkpoint) and is raised again as ``Interrupted``."""
    results: dict = {}
    queue = list(tasks)

    def done(task: Task, failure: Optional[str]) -> None:
        results[task.name] = failure
        if on_done is not None:
            on_done(task, failure)

    def next_task() -> Optional[Task]:
        if queue:
            return queue.pop(0)
        return refill() if refill is not None else None

    threads = threads_per_member(launch)
    if launch.launcher == "local" and launch.jobs == 1:
        while (task := next_task()) is not None:
            done(task, task.fn(*task.args, threads=threads))
    elif launch.launcher == "local":
        _run_pool(next_task, launch.jobs, threads, done)
    else:
        _run_submitit(next_task, launch, threads, Path(folder), say, done)
    return results


# -- N local processes -----------------------------------------------------------------------------

def _worker_setup() -> None:
    """A pool worker leaves the terminal's process group: a Ctrl-C reaches the command alone, which
    sends each member one SIGTERM (a second signal would stop a run mid-step, without its
    checkpoint). Waiting for work, it ignores Ctrl-C anyway. Its members share the terminal, so
    Hugging Face's per-file loading bars are off."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _guarded(fn, *args, threads=None) -> Optional[str]:
    """A member in a pool worker: a signal that stops it (its checkpoint written) becomes its failure
    line, so the worker stays whole and the pool usable; the command resumes it next time."""
    from ..runtime.interrupts import Interrupted

    try:
        return fn(*args, threads=threads)
    except Interrupted as exc:
        return f"stopped by {exc.name} (its checkpoint is written; the same command resumes it)"


def _failure_of(future: cf.Future) -> Optional[str]:
    exc = future.exception()
    if exc is None:
        return future.result()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _run_pool(next_task: Callable[[], Optional[Task]], jobs: int, threads: Optional[int], done) -> None:
    from ..runtime import interrupts

    context = multiprocessing.get_context("spawn")       # no fork of a process holding torch's threads
    with interrupts.handling():
        pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_setup)
        running: dict = {}

        def fill() -> None:
            nonlocal pool
            while len(running) < jobs and (task := next_task()) is not None:
                try:
                    future = pool.submit(_guarded, task.fn, *task.args, threads=threads)
                except cf.process.BrokenProcessPool:      # a worker was killed (say, out of memory): a new pool
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_setup)
                    future = pool.submit(_guarded, task.fn, *task.args, threads=threads)
                running[future] = task

        try:
            fill()
            while running:
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    done(running.pop(future), _failure_of(future))
                fill()
        except interrupts.Interrupted as exc:
            _stop_workers(pool, exc.signum)
            pool.shutdown(wait=True, cancel_futures=True)        # each member writes its checkpoint
            raise
        pool.shutdown(wait=True)


def _stop_workers(pool: cf.ProcessPoolExecutor, signum: int) -> None:
    for process in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(process.pid, signal.SIGTERM if signum == signal.SIGINT else signum)
        except (ProcessLookupError, OSError):
            pass


# -- submitit: SLURM, or its local executor --------------------------------------------------------

def make_executor(launch: Launch, folder: Path, threads: Optional[int]):
    """The submitit executor of a launch: SLURM jobs with its options, or submitit's local jobs."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher {launch.launcher} needs submitit: pip install 'wml-framework[slurm]'") from None
    cluster = "slurm" if launch.launcher == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:                  # submitit finds no srun: this is not a SLURM machine
        raise ConfigError(f"--launcher slurm: {exc} (submit from a SLURM login node, or try the same "
                          "command with --launcher submitit-local)") from None
    params = {SLURM_KEYS[k]: v for k, v in launch.slurm.items()}
    params.setdefault("timeout_min", 60 * 24)
    if cluster == "slurm":
        params.setdefault("cpus_per_task", threads or 1)
        # submitit's warning signal before the limit: it requeues the member, which resumes from its
        # last periodic checkpoint (checkpoint_interval)
        params.setdefault("slurm_signal_delay_s", 120)
    else:
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(name="wml", tasks_per_node=1, nodes=1, **params)
    return executor


def _run_submitit(next_task: Callable[[], Optional[Task]], launch: Launch, threads: Optional[int], folder: Path,
                  say, done) -> None:
    """Keep ``launch.jobs`` jobs queued or running; collect each as it ends. Stopping this command
    cancels the jobs it submitted (a cancelled member resumes from its checkpoint next time)."""
    from ..runtime import interrupts

    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(launch, folder, threads)
    running: dict = {}

    def fill() -> None:
        while len(running) < launch.jobs and (task := next_task()) is not None:
            job = executor.submit(_SubmititMember(task.fn), *task.args, threads=threads)
            say(f"  {task.name}: submitted as job {job.job_id} (logs: {folder})")
            running[job.job_id] = (job, task)

    with interrupts.handling():
        try:
            fill()
            while running:
                for job_id, (job, task) in list(running.items()):
                    if job.done():
                        del running[job_id]
                        done(task, _job_failure(job))
                fill()
                if running:
                    time.sleep(POLL_S)
        except interrupts.Interrupted:
            for job, _task in running.values():
                job.cancel(check=False)
            raise


def _job_failure(job) -> Optional[str]:
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 - any way a job can fail is reported as the member's failure
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return f"job {job.job_id} failed: {lines[-1] if lines else type(exc).__name__}"


class _SubmititMember:
    """The member as submitit runs it; on preemption or timeout submitit calls ``checkpoint`` and
    requeues the same member, which resumes from its run folder's last checkpoint."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return _guarded(self.fn, *args, **kwargs)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(_SubmititMember(self.fn), *args, **kwargs)
