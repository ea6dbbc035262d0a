"""Running a comparison: the one teacher, then every member in turn, then the results.

Each member is an ordinary run folder, so a stopped comparison continues where it was: a finished
member (``summary.json`` and ``eval.json`` present) is skipped, an interrupted one resumes from its
checkpoint, a trained but unevaluated one is only evaluated. Each member's own log goes to
``wml.log`` in its folder; the terminal gets one line per member and an overall ETA.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable, Optional

from .. import config as cfgmod
from .. import hookimpl
from ..evaluation.scoring import EvaluationError
from ..plugin_system.host import PluginError, PluginHost
from ..runner import RunError, WMLTrainer
from ..runtime.atomic import atomic_write_json
from ..runtime.run_layout import RunLayout, is_model_dir
from ..training.loop import TrainingError
from ..training.progress import RunProgress
from .jobs import Launch, Task, run_tasks, threads_per_member
from .plan import PATH_KEYS, ComparePlan, Member, check_or_save
from .results import collect, write_outputs

__all__ = ["MEMBER_FILE", "FREE_KEYS", "member_done", "check_saved_config", "shared_teacher", "member_host", "member_job",
           "run_compare"]

MEMBER_FILE = "compare_member.json"
#: keys that may differ between a member's saved config and the plan (they change speed, not results)
FREE_KEYS = ("threads",)


class _MemberProgress:
    """A run observer: the run's progress display, reduced to one bar per member on a terminal
    (silence otherwise: the member's own lines go to its ``wml.log``)."""

    def __init__(self, desc: str):
        self.show = RunProgress(desc, detail=False, leave=False)

    @hookimpl
    def wml_run_event(self, event, payload):
        self.show(event, payload)


def _file_log(path: Path) -> Callable[[str], None]:
    def log(message: str) -> None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"{message}\n")
    return log


def member_host(make_host: Callable[[], PluginHost], desc: Optional[str]) -> PluginHost:
    """The plugins of one member, less the per-step log; with a progress bar named ``desc``
    (None: members side by side, whose bars would overwrite each other)."""
    host = make_host()
    names = {name for name, _ in host.pm.list_name_plugin()}
    if "run_log" in names:
        host.unregister("run_log")                 # its per-step lines would drown the comparison's
    if desc is not None:
        host.register(_MemberProgress(desc), f"compare_progress_{id(desc)}")
    return host


def member_done(member: Member) -> bool:
    layout = RunLayout(member.run_dir)
    return layout.summary.is_file() and layout.eval_json.is_file()


def _add_wall(member: Member, seconds: float, finished: bool, failure: Optional[str] = None) -> None:
    path = member.run_dir / MEMBER_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0, "sessions": 0}
    data["wall_s"] = round(data["wall_s"] + seconds, 1)
    data["sessions"] += 1
    data["finished"] = finished
    data["failed"] = failure
    atomic_write_json(path, data)


def _same_path(a, b) -> bool:
    return bool(a) and bool(b) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_saved_config(run_dir: Path, expected: cfgmod.WMLConfig, host: PluginHost, what: str) -> None:
    """A run folder this comparison continues must have been started with the plan's configuration:
    otherwise its results would be mixed with another comparison's."""
    try:
        saved = cfgmod.load(RunLayout(run_dir).config, host=host).to_dict()
    except cfgmod.ConfigError as exc:
        raise cfgmod.ConfigError(f"{what} in {run_dir} cannot be read ({exc}); move it away or use another --out") from None
    want = expected.to_dict()
    for key in sorted(set(saved) | set(want)):
        if key in FREE_KEYS or saved.get(key) == want.get(key):
            continue
        if key in PATH_KEYS and _same_path(saved.get(key), want.get(key)):
            continue
        raise cfgmod.ConfigError(f"{what} in {run_dir} was started with {key} = {saved.get(key)!r}, but this "
                                 f"comparison has {want.get(key)!r}; use another --out, or the options it was started with")


def _teacher_scored(plan: ComparePlan) -> bool:
    for m in plan.members:
        try:
            if "teacher" in json.loads(RunLayout(m.run_dir).eval_json.read_text()).get("models", {}):
                return True
        except (OSError, ValueError):
            continue
    return False


def shared_teacher(plan: ComparePlan, make_host, say) -> Path:
    """The teacher every member shares: the one given, or one trained once in ``teacher_run/``."""
    if plan.teacher_given or is_model_dir(plan.teacher_dir):
        return plan.teacher_dir
    host = member_host(make_host, "teacher")
    log = _file_log(plan.out / "teacher_run.log")
    cfg = plan.teacher_config(host=host)
    t0 = time.time()
    say(f"teacher: training a teacher for every member (log: {plan.out / 'teacher_run.log'})")
    if RunLayout(plan.teacher_run).config.is_file():
        check_saved_config(plan.teacher_run, cfg, host, "the teacher's run")
        trainer = WMLTrainer.from_run_dir(plan.teacher_run, host=host, log=log)
    else:
        trainer = WMLTrainer.from_config(cfg, plan.teacher_run, host=host, log=log)
    folder = trainer.train_teacher_only()
    say(f"teacher: ready in {time.time() - t0:.0f} s ({folder})")
    return folder


def _run_member(plan: ComparePlan, member: Member, first: bool, make_host, say,
                threads: Optional[int] = None, quiet: bool = False) -> Optional[str]:
    """Train (or resume), evaluate and report one member; returns why it failed, or None.
    ``threads`` (members run side by side) replaces the config's; ``quiet``: no progress bar."""
    layout = RunLayout(member.run_dir)
    host = member_host(make_host, None if quiet else member.name)
    expected = plan.member_config(member, host=host)
    if threads is not None:
        expected = expected.replace(threads=str(threads))
    member.run_dir.mkdir(parents=True, exist_ok=True)
    log = _file_log(member.run_dir / "wml.log")
    t0 = time.time()
    finished, failure = False, None
    try:
        if layout.config.is_file():
            overrides = None if threads is None else {"threads": str(threads)}
            trainer = WMLTrainer.from_run_dir(member.run_dir, host=host, log=log, overrides=overrides)
            if not layout.summary.is_file():
                say(f"  {member.name}: resuming the interrupted run")
                trainer.train()
        else:
            trainer = WMLTrainer.from_config(expected, member.run_dir, host=host, log=log)
            trainer.train()
        # the shared teacher is scored once, with the first member to finish; evaluators' lines go to the log
        with (member.run_dir / "wml.log").open("a", encoding="utf-8") as fh, contextlib.redirect_stderr(fh):
            trainer.evaluate(teacher=first, **plan.eval_options(member))
        trainer.report()
        finished = True
    except (TrainingError, RunError, EvaluationError, PluginError) as exc:
        failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log(f"Error: {exc}")
    finally:
        _add_wall(member, time.time() - t0, finished, failure)
    return failure


class _InProcess:
    """A member run in this process (``--jobs 1``): with the caller's plugin host and progress lines."""

    def __init__(self, plan: ComparePlan, member: Member, first: bool, make_host, say):
        self.args = (plan, member, first, make_host, say)

    def __call__(self, *, threads: Optional[int] = None) -> Optional[str]:
        return _run_member(*self.args, threads=threads)


def member_job(plan: ComparePlan, member_name: str, first: bool, *, threads: Optional[int] = None) -> Optional[str]:
    """One member in a process of its own (``--jobs``, ``--launcher``): the plan travels pickled."""
    member = next(m for m in plan.members if m.name == member_name)
    return _run_member(plan, member, first, PluginHost, say=_file_log(member.run_dir / "wml.log"),
                       threads=threads, quiet=True)


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_compare(plan: ComparePlan, *, make_host: Callable[[], PluginHost] = PluginHost,
                say: Callable[[str], None] = print, command: Optional[str] = None,
                launch: Launch = Launch()) -> dict:
    """Train and evaluate every member of ``plan`` (continuing an earlier start), then write
    ``comparison.json``, ``comparison.md`` and the plots. Returns the comparison's dictionary.
    ``launch`` runs the members side by side (``--jobs``) or as SLURM jobs (``--launcher``); members
    in other processes use the installed plugins (``make_host`` serves the in-process ones)."""
    continuing = check_or_save(plan)
    host = make_host()
    for member in plan.members:     # every folder this comparison would reuse belongs to it
        if RunLayout(member.run_dir).config.is_file():
            check_saved_config(member.run_dir, plan.member_config(member, host=host), host, f"member {member.name}")
    total = len(plan.members)
    say(f"compare: {len(plan.methods)} method(s) × {len(plan.seeds)} seed(s) = {total} runs in {plan.out}"
        + (" (continuing)" if continuing else ""))
    shared_teacher(plan, make_host, say)
    t_all = time.time()
    todo = []
    for k, member in enumerate(plan.members, start=1):
        if member_done(member):
            say(f"[{k}/{total}] {member.name}: done earlier, skipped")
        else:
            todo.append(member)
    position = {m.name: k for k, m in enumerate(plan.members, start=1)}
    started = time.time()
    finished: list = []
    waiting = list(todo)
    # the shared teacher is scored with one member only: the next to start while none has it (again
    # after its scorer failed), so a member that fails does not leave the teacher unscored
    scorer: dict = {"name": None}

    def next_member() -> Optional[Task]:
        if not waiting:
            return None
        member = waiting.pop(0)
        first = scorer["name"] is None and not _teacher_scored(plan)
        if first:
            scorer["name"] = member.name
        if launch.parallel:
            return Task(member.name, member_job, (plan, member.name, first))
        say(f"[{position[member.name]}/{total}] {member.name}: {member.method.title} (log: {member.run_dir / 'wml.log'})")
        return Task(member.name, _InProcess(plan, member, first, make_host, say))

    def on_done(task: Task, failure: Optional[str]) -> None:
        member = next(m for m in todo if m.name == task.name)
        k = position[member.name]
        finished.append(member)
        if failure:
            if scorer["name"] == member.name:
                scorer["name"] = None
            say(f"[{k}/{total}] {member.name}: FAILED ({failure}); the comparison goes on without it, and the same "
                f"command tries it again (its log: {member.run_dir / 'wml.log'})")
            return
        left = len(todo) - len(finished)
        per_member = (time.time() - started) / len(finished)
        eta = f"; ETA {_eta(left * per_member)} for {left} more" if left else ""
        say(f"[{k}/{total}] {member.name}: finished in {_eta(_wall(member))} — {_member_line(member)}{eta}")

    if launch.parallel:
        threads = threads_per_member(launch)
        where = "SLURM jobs" if launch.launcher == "slurm" else "processes"
        say(f"compare: {len(todo)} run(s), {launch.jobs} at a time as {where}"
            + (f", {threads} thread(s) each" if threads else "") + " (each run's log: its wml.log)")
    run_tasks([], launch, folder=plan.out / "jobs", say=say, on_done=on_done, refill=next_member)
    result = collect(plan, command=command)
    paths = write_outputs(plan.out, result)
    say(f"compare: all {total} runs done in {_eta(time.time() - t_all)} this session; "
        + ", ".join(str(p) for p in paths))
    return result


def _wall(member: Member) -> float:
    try:
        return float(json.loads((member.run_dir / MEMBER_FILE).read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _member_line(member: Member) -> str:
    layout = RunLayout(member.run_dir)
    try:
        summary = json.loads(layout.summary.read_text())
        evaluation = json.loads(layout.eval_json.read_text())
    except (OSError, ValueError):
        return "results unreadable"
    ens = evaluation.get("models", {}).get("ensemble", {})
    pairs = (ens.get("minimal_pairs") or {}).get("macro_accuracy")
    loss = summary.get("ensemble_val_loss")
    diversity = summary.get("diversity") or {}
    return (f"ensemble held-out loss {'—' if loss is None else format(loss, '.4f')}"
            + (f", min. pairs {100 * pairs:.1f}%" if pairs is not None else "")
            + (f", peers' JS {diversity['js']:.4f} nats" if diversity.get("js") is not None else "")
            + (f", ensemble gain {diversity['ensemble_gain']:+.4f}" if diversity.get("ensemble_gain") is not None else ""))
