"""Members side by side: ``--jobs N`` (a pool of local processes) and ``--launcher`` (submitit,
SLURM or its local executor): the options, the runner on toy members, and ``wml compare`` end to end."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from jobs_tasks import (
    creates_file,
    dies,
    fails,
    reports_failure,
    stopped_by_a_signal,
    waits_for_file,
    write_pid,
)
from run_helpers import TINY, toy_corpus

from wml_framework import config as cfgmod
from wml_framework.cli import main
from wml_framework.compare.jobs import Launch, Task, run_tasks, threads_per_member

HERE = Path(__file__).parent


def test_launch_options_are_checked_before_any_work():
    """Catches: an unknown SLURM option or a non-number passed on to the scheduler (it would fail
    hours later in the queue), --slurm options silently ignored without a cluster launcher."""
    assert Launch.parse(2, "slurm", ["partition=gpu", "time_min=90"]).slurm == {"partition": "gpu", "time_min": 90}
    with pytest.raises(cfgmod.ConfigError, match="option 'nodes' is unknown; valid: partition"):
        Launch.parse(1, "slurm", ["nodes=2"])
    with pytest.raises(cfgmod.ConfigError, match="time_min = 'soon' is not allowed; expected a whole number"):
        Launch.parse(1, "slurm", ["time_min=soon"])
    with pytest.raises(cfgmod.ConfigError, match="not KEY=VALUE"):
        Launch.parse(1, "slurm", ["gpu"])
    with pytest.raises(cfgmod.ConfigError, match="need --launcher slurm"):
        Launch.parse(2, "local", ["partition=gpu"])
    with pytest.raises(cfgmod.ConfigError, match="--launcher: value 'pbs'"):
        Launch(1, "pbs")
    result = CliRunner().invoke(main, ["compare", "--jobs", "2", "--slurm", "partition=gpu", "--out", "unused"])
    assert result.exit_code == 2 and "need --launcher slurm" in result.output
    assert not Path("unused").exists()


def test_the_cores_are_divided_between_local_jobs():
    """Catches: every member of --jobs N taking every core (N × cores threads fight for the CPU)."""
    assert threads_per_member(Launch(1), cores=8) is None            # in-process: the config decides
    assert threads_per_member(Launch(2), cores=8) == 4
    assert threads_per_member(Launch(3), cores=2) == 1
    assert threads_per_member(Launch(2, "slurm", {"cpus_per_member": 6}), cores=2) == 6


def test_a_pool_runs_each_member_once_in_processes_of_its_own(tmp_path):
    """Catches: members run in this process (no parallelism), a member run twice or never, a raised
    error stopping the others instead of becoming that member's failure line, on_done not called."""
    tasks = [Task(f"m{k}", write_pid, (str(tmp_path), f"m{k}")) for k in range(3)]
    tasks += [Task("boom", fails, ("it broke\nsecond line",)), Task("said", reports_failure, ("diverged",))]
    ended: list = []
    results = run_tasks(tasks, Launch(2), folder=tmp_path / "jobs", on_done=lambda t, f: ended.append((t.name, f)))
    assert results == {"m0": None, "m1": None, "m2": None, "boom": "RuntimeError: it broke", "said": "diverged"}
    assert sorted(name for name, _ in ended) == sorted(results)
    pids = {(tmp_path / f"m{k}.txt").read_text().split()[0] for k in range(3)}
    assert str(os.getpid()) not in pids
    assert {(tmp_path / f"m{k}.txt").read_text().split()[1] for k in range(3)} == {str(threads_per_member(Launch(2)))}


@pytest.mark.timeout(300)
def test_a_free_slot_is_refilled_while_the_others_run(tmp_path):
    """Asynchronous refill: member A ends only once member C exists, and C is only handed out by
    ``refill`` when a slot frees (member B ends at once). Batches that wait for their slowest member
    would never start C: the test would hang (and time out).
    Catches: refill asked only when every running member has ended, or never; a refilled task not run."""
    asked: list = []

    def refill():
        asked.append(len(asked))
        return Task("c", creates_file, (str(tmp_path), "released")) if len(asked) == 1 else None

    tasks = [Task("a", waits_for_file, (str(tmp_path), "released")), Task("b", write_pid, (str(tmp_path), "b"))]
    results = run_tasks(tasks, Launch(2), folder=tmp_path / "jobs", refill=refill)
    assert results == {"a": None, "b": None, "c": None} and len(asked) >= 2


def test_a_stopped_or_killed_member_leaves_the_pool_usable(tmp_path):
    """A member stopped by a signal (its run checkpointed) is that member's failure line, and one whose
    process is killed outright costs a new pool, not the comparison: the members after it still run.
    Catches: the stopped run's exception not crossing between processes (it broke the pool, and the
    command hung in the pool's shutdown: seen in a real tuning), a broken pool ending the command."""
    from wml_framework.runtime.interrupts import Interrupted

    again = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM, 7)))
    assert (again.signum, again.step, again.exit_code) == (signal.SIGTERM, 7, 128 + signal.SIGTERM)
    tasks = [Task("stopped", stopped_by_a_signal), *(Task(f"m{k}", write_pid, (str(tmp_path), f"m{k}")) for k in range(3))]
    results = run_tasks(tasks, Launch(2), folder=tmp_path)
    assert results["stopped"].startswith("stopped by SIGTERM") and all(results[f"m{k}"] is None for k in range(3))
    results = run_tasks([Task("dies", dies), *(Task(f"n{k}", write_pid, (str(tmp_path), f"n{k}")) for k in range(4))],
                        Launch(2), folder=tmp_path)
    assert "BrokenProcessPool" in results["dies"]
    assert results["n3"] is None and (tmp_path / "n3.txt").is_file()      # started after the break, in a new pool


def test_one_job_runs_in_this_process(tmp_path):
    """Catches: --jobs 1 paying for a process per member (and losing the in-process plugins)."""
    more = iter([Task("n", write_pid, (str(tmp_path), "n"))])
    run_tasks([Task("m", write_pid, (str(tmp_path), "m"))], Launch(1), folder=tmp_path, refill=lambda: next(more, None))
    assert (tmp_path / "m.txt").read_text() == f"{os.getpid()} None" == (tmp_path / "n.txt").read_text()


_RUNNER = """
import sys
sys.path.insert(0, {here!r})
from jobs_tasks import waits_for_a_signal
from wml_framework.compare.jobs import Launch, Task, run_tasks
from wml_framework.runtime.interrupts import Interrupted
tasks = [Task(n, waits_for_a_signal, ({folder!r}, n)) for n in ("a", "b")]
try:
    run_tasks(tasks, Launch(2), folder={folder!r})
except Interrupted as exc:
    sys.exit(exc.exit_code)
"""


def test_ctrl_c_stops_every_member_cleanly(tmp_path):
    """Ctrl-C at a terminal (SIGINT to the whole process group) once both members are running (files
    they write, not a time): each member gets one signal, finishes its step, writes its checkpoint,
    and the command exits 130.
    Catches: members reached twice (the terminal's SIGINT and the command's forwarded SIGTERM: the
    second stops a run mid-step, without its checkpoint; found by review), members left running."""
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER.format(here=str(HERE), folder=str(tmp_path))],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        while not all((tmp_path / f"{n}.ready").exists() for n in "ab"):
            assert proc.poll() is None, "the runner ended before its members started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)                  # what a terminal's Ctrl-C does
        assert proc.wait(timeout=300) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert {(tmp_path / f"{n}.checkpoint").read_text() for n in "ab"} == {str(int(signal.SIGTERM))}


def test_slurm_jobs_ask_for_the_options_given(tmp_path, monkeypatch):
    """What submitit hands to sbatch (a stand-in sbatch and srun record it: no cluster needed).
    Catches: --slurm options dropped on the way to the scheduler, no warning signal before the time
    limit (a member killed without its checkpoint), a traceback on a machine without SLURM."""
    pytest.importorskip("submitit")
    from wml_framework.compare.jobs import make_executor

    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(cfgmod.ConfigError, match="--launcher slurm: .*srun.*submitit-local"):
        make_executor(Launch(1, "slurm"), tmp_path, 1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "queued.sh"
    for name, body in (("srun", "exit 0"), ("sbatch", f'cp "$1" {script}; echo "Submitted batch job 4242"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    launch = Launch.parse(4, "slurm", ["partition=gpu", "gpus_per_member=1", "time_min=90", "cpus_per_member=8",
                                       "account=lab"])
    job = make_executor(launch, tmp_path / "jobs", threads_per_member(launch)).submit(write_pid, str(tmp_path), "m")
    assert job.job_id == "4242"
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --account=lab", "#SBATCH --signal=USR2@120"):
        assert line in text, text


def _compare_args(corpus: Path, out: Path, *extra: str) -> list:
    sets = []
    for key, value in {**TINY, "threads": "1"}.items():
        sets += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return ["compare", "--corpus", str(corpus), *sets, "--methods", "wml,ce", "--seeds", "2", "--out", str(out), *extra]


def _member_results(out: Path) -> dict:
    data = json.loads((out / "comparison.json").read_text())
    return {name: json.loads((out / "members" / name / "summary.json").read_text())["ensemble_val_loss"]
            for name in data["members"]}


@pytest.mark.slow
def test_compare_with_two_jobs_matches_one_at_a_time(tmp_path):
    """``wml compare --jobs 2`` trains the same members to the same numbers as one at a time
    (one thread each both ways), and scores the shared teacher once.
    Catches: a member's config altered on the way to its process (seed, method, teacher), a member
    skipped or run twice, the teacher scored by every member or by none."""
    corpus = toy_corpus(tmp_path / "toy.txt")
    one, two = tmp_path / "one", tmp_path / "two"
    first = CliRunner().invoke(main, _compare_args(corpus, one))
    assert first.exit_code == 0, first.output
    result = subprocess.run([sys.executable, "-m", "wml_framework.cli", *_compare_args(corpus, two, "--jobs", "2")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 run(s), 2 at a time as processes, 1 thread(s) each" in result.stderr
    assert result.stderr.count(": finished in ") == 4
    a, b = _member_results(one), _member_results(two)
    assert a.keys() == b.keys() and len(a) == 4
    assert all(b[k] == pytest.approx(a[k], rel=1e-5) for k in a), (a, b)
    scored = [m for m in a if "teacher" in json.loads((two / "members" / m / "eval.json").read_text())["models"]]
    assert len(scored) == 1
    assert json.loads((two / "comparison.json").read_text())["teacher"] is not None


@pytest.mark.slow
def test_compare_through_submitit_jobs(tmp_path):
    """``--launcher submitit-local``: each member a submitit job (the SLURM path on this machine),
    collected by the same command; a second start skips them all.
    Catches: a member function submitit cannot pickle, job results not collected, failures lost."""
    pytest.importorskip("submitit")
    corpus = toy_corpus(tmp_path / "toy.txt")
    out = tmp_path / "cmp"
    args = [a if a != "2" else "1" for a in _compare_args(corpus, out, "--launcher", "submitit-local", "--jobs", "2")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("submitted as job") == 2 and result.output.count(": finished in ") == 2
    data = json.loads((out / "comparison.json").read_text())
    assert data["missing"] == [] and set(data["members"]) == {"wml-seed1337", "ce-seed1337"}
    assert list((out / "jobs").glob("*_log.out"))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.output.count("done earlier, skipped") == 2
