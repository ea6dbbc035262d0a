"""Data-parallel runs (torchrun, gloo on CPU) compute what one process computes on the global batch.

Would catch: ranks that draw the same rows instead of disjoint shares (the losses then differ from
one process's), gradients summed instead of averaged (the steps differ), an outer step computed
from one rank's share only (ω differs from one process's), held-out losses of one shard, ω that
drifts apart between ranks (the debug checksum stops the run), a second rank writing files, a
rank killed mid-run that leaves a checkpoint that does not resume, and a resume that needs the
same number of processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import TINY, read_metrics

pytestmark = pytest.mark.slow          # real torchrun launches: the full suite only

SETTINGS = {**TINY, "dtype": "float64", "batch_size": 4, "num_batches": 2, "max_steps": 4, "lr_decay_iters": 4,
            "outer_every": 2, "eval_interval": 2, "checkpoint_interval": 2, "teacher_steps": 8, "blimp_limit": 4,
            "threads": "1", "hypergradient": "exact_adam"}
# exact_adam: the reductions of the exact route plus AdamW's diagonal, which must be the same on every rank


def _config(tmp_path: Path, corpus: Path, **changes) -> Path:
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {**SETTINGS, "corpus": str(corpus), **changes}.items()))
    return path


def _env() -> dict:
    env = {**os.environ, "WML_DEBUG_DISTRIBUTED": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def _wml(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wml_framework", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("dist")
    cfg = _config(tmp, corpus)
    one = _wml("run", "--config", str(cfg), "--out", str(tmp / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _wml("run", "--nproc", "2", "--config", str(cfg), "--out", str(tmp / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp / "one", tmp / "two", two


def _by_kind(run: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == kind]


def _close(a, b, tol=1e-6) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol


def test_two_processes_log_the_losses_and_omega_of_one(one_and_two):
    one, two, _ = one_and_two
    for kind, keys in (("train", ("ce", "kl", "loss", "omega")), ("outer", ("omega", "grad", "val_loss")),
                       ("eval", ("val_loss", "ensemble_val_loss", "teacher_val_loss"))):
        a, b = _by_kind(one, kind), _by_kind(two, kind)
        assert len(a) == len(b) > 0, kind
        for ra, rb in zip(a, b):
            for key in keys:
                assert _close(ra[key], rb[key]), (kind, ra["step"], key, ra[key], rb[key])
    moved = _by_kind(two, "outer")[-1]["omega"]
    assert max(abs(w - 1 / len(moved)) for w in moved) > 1e-6           # ω did move: the comparison means something


def test_the_two_process_run_exports_loadable_peers_and_one_of_everything(one_and_two):
    from transformers import AutoModelForCausalLM

    one, two, proc = one_and_two
    for i in range(SETTINGS["num_peers"]):
        AutoModelForCausalLM.from_pretrained(two / "peers" / f"peer_{i}")
    summary = json.loads((two / "summary.json").read_text())
    assert _close(summary["omega"], json.loads((one / "summary.json").read_text())["omega"])
    # the peers' diversity is added up over both ranks' blocks (catches a rank reporting only its share)
    alone = json.loads((one / "summary.json").read_text())["diversity"]
    assert summary["diversity"]["tokens"] == alone["tokens"]
    assert _close([summary["diversity"][k] for k in ("js", "ensemble_gain")], [alone[k] for k in ("js", "ensemble_gain")])
    assert (two / "eval.json").exists() and (two / "report.md").exists()
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))                                # one writer: no record twice
    assert proc.stdout.strip().splitlines()[-1] == str(two)              # the run folder printed once


def _launch_two(args: list[str], run: Path, until_step: int) -> subprocess.Popen:
    """``wml run --nproc 2 ARGS`` in the background, returned once it has logged ``until_step``."""
    launcher = subprocess.Popen([sys.executable, "-m", "wml_framework", "run", "--nproc", "2", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())

    def reached() -> bool:
        return any(r["kind"] == "train" and r["step"] >= until_step
                   for r in (read_metrics(run) if (run / "metrics.jsonl").exists() else []))

    deadline = time.time() + 300        # not when to kill (that is the step): how long a stuck launcher may take
    while not reached():
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        if time.time() > deadline:
            launcher.kill()
            pytest.fail(f"the run did not log step {until_step} within 300 s (a stuck launcher)")
        time.sleep(0.2)
    return launcher


def _worker_pids(launcher: int) -> dict[int, int]:
    """RANK → pid of the worker processes below ``launcher`` (found through /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == launcher or not _descends(int(entry.name), launcher):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((int(item[5:]) for item in environ if item.startswith(b"RANK=")), None)
        if rank is not None:
            out[rank] = int(entry.name)
    return out


def _descends(pid: int, ancestor: int, depth: int = 4) -> bool:
    for _ in range(depth):
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
    return pid == ancestor


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_rank_then_a_sigterm_stop_the_run_cleanly_and_it_resumes_on_any_number_of_ranks(tmp_path, corpus):
    """Would catch: a surviving rank that hangs or prints a traceback when another dies; a launcher that
    dies alone on SIGTERM and leaves its ranks running; ranks that stop at different steps (the one that
    stops last would wait forever); a checkpoint that cannot resume under torchrun or on one process."""
    from wml_framework.runtime import checkpoint

    cfg = _config(tmp_path, corpus, max_steps=30, lr_decay_iters=30, eval_interval=15, checkpoint_interval=2)
    run = tmp_path / "run"
    launcher = _launch_two(["--config", str(cfg), "--out", str(run)], run, until_step=4)
    workers = _worker_pids(launcher.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)                                  # 1. one rank dies
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode != 0
    assert "another process of this run stopped" in err and f"wml run --resume {run} --nproc 2" in err
    frames = [line for line in err.splitlines() if line.strip().startswith('File "')]
    assert not any("wml_framework" in f or "wml_plugins" in f or "/plugins/" in f for f in frames), frames   # no wml traceback
    killed_at = checkpoint.load(run, warn=lambda m: None)["step"]
    assert 2 <= killed_at < 30

    launcher = _launch_two(["--resume", str(run)], run, until_step=killed_at + 3)   # 2. resumed on 2 ranks
    workers = _worker_pids(launcher.pid)
    launcher.send_signal(signal.SIGTERM)                                 # 3. then SIGTERM to the launcher
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert f"continue with: wml run --resume {run} --nproc 2" in err, err[-3000:]
    for pid in workers.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    last = max(r["step"] for r in read_metrics(run) if r["kind"] == "train")
    assert checkpoint.load(run, warn=lambda m: None)["step"] == last > killed_at   # nothing trained is lost

    done = _wml("run", "--resume", str(run), timeout=600)                # 4. finished on one process
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in _by_kind(run, "train")] == list(range(1, 31))   # no step lost or logged twice
