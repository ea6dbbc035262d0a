"""Kill a run with SIGKILL at random moments, resume it each time, and check that it ends exactly as
an uninterrupted run of the same configuration: every peer tensor, ω, ``summary.json`` and every
``metrics.jsonl`` record (wall-clock fields aside).

    python benchmarks/kill_resume.py --config tiny.toml --kills 5 --seed 0 [--set key=value …]

prints ``kills K, resumes R, identical`` (exit 0) or what differs (exit 1). Kill times are drawn
from ``--seed``; each kill is reported with the last phase the run had announced. The run's own
checkpoints decide where a resume starts; nothing here helps it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WALL_CLOCK = {"tokens_per_s", "elapsed_s", "threads", "seconds", "created", "weights"}
# threads: chosen by timing (wml_framework.runtime.threads); eval.json: when and how long each score took,
# and the stamp of the weight files (their modification times)


def _cli() -> list[str]:
    return [sys.executable, "-m", "wml_framework.cli", "run"]


def _strip(value):
    """A JSON value without its wall-clock fields."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two finished run folders (empty when identical): every peer tensor,
    ``summary.json``, ``metrics.jsonl``, the teacher's weights and ``teacher_metrics.jsonl`` where
    a run trained it, and ``eval.json`` where both sides have one (wall-clock fields aside)."""
    from safetensors.torch import load_file

    out = []
    peers = sorted(p.name for p in (a / "peers").iterdir())
    if peers != sorted(p.name for p in (b / "peers").iterdir()):
        return [f"peer folders differ: {peers}"]
    for name in peers:
        ta, tb = load_file(a / "peers" / name / "model.safetensors"), load_file(b / "peers" / name / "model.safetensors")
        if ta.keys() != tb.keys():
            out.append(f"{name}: different tensors")
        out += [f"{name}/{k}: values differ" for k in ta if k in tb and not bool((ta[k] == tb[k]).all())]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    if _strip(sa) != _strip(sb):
        out.append("summary.json differs" + ("" if sa.get("omega") == sb.get("omega") else " (ω too)"))
    for records in ("metrics.jsonl", "teacher_metrics.jsonl"):
        if not (a / records).exists() and not (b / records).exists():
            continue            # a given teacher: no teacher records
        ma, mb = ([_strip(json.loads(line)) for line in (d / records).read_text().splitlines()] if (d / records).exists()
                  else [] for d in (a, b))
        if ma != mb:
            first = next((i for i, (x, y) in enumerate(zip(ma, mb)) if x != y), min(len(ma), len(mb)))
            out.append(f"{records} differs ({len(ma)} vs {len(mb)} records; first difference at record {first})")
    ta, tb = (d / "teacher" / "model.safetensors" for d in (a, b))
    if ta.exists() or tb.exists():
        if not (ta.exists() and tb.exists()):
            out.append("teacher/ is missing on one side")
        else:
            wa, wb = load_file(ta), load_file(tb)
            out += [f"teacher/{k}: values differ" for k in wa if k not in wb or not bool((wa[k] == wb[k]).all())]
    ea, eb = (d / "eval.json" for d in (a, b))
    if ea.exists() and eb.exists():         # one side may not have been evaluated (a training-only reference)
        scores = [_strip(json.loads(e.read_text().replace(str(d), "RUN"))) for e, d in ((ea, a), (eb, b))]
        if scores[0] != scores[1]:
            out.append("eval.json differs")
    return out


def _last_phase(log: str) -> str:
    phases = [line.split("phase: ", 1)[1].strip() for line in log.splitlines() if line.startswith("phase: ")]
    return phases[-1] if phases else "start-up"


def kill_and_resume(args: list[str], workdir: Path, kills: int, seed: int, env: dict | None = None,
                    log=print) -> dict:
    """Run once uninterrupted, then again with ``kills`` SIGKILLs and resumes; compare the two."""
    env = {**os.environ, **(env or {})}
    reference, victim = workdir / "reference", workdir / "victim"
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*_cli(), *args, "--out", str(reference)], stdout=subprocess.DEVNULL, stderr=err,
                                text=True, env=env)
        started = None          # when the run folder appeared: kills before it test nothing but start-up
        while proc.poll() is None:
            if started is None and (reference / "config.toml").exists():
                started = time.perf_counter() - t0
            time.sleep(0.05)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"the uninterrupted run failed:\n{err.read()[-3000:]}")
    duration = time.perf_counter() - t0
    started = started or 0.0
    log(f"uninterrupted run: {duration:.1f} s (run folder after {started:.1f} s)")
    rng = random.Random(seed)
    delivered, launches = 0, 0
    while delivered < kills:
        cmd = [*_cli(), "--resume", str(victim)] if (victim / "config.toml").exists() else [*_cli(), *args, "--out", str(victim)]
        delay = started + rng.uniform(0.05, 0.7) * (duration - started)
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
            launches += 1
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                delivered += 1
                err.seek(0)
                log(f"kill {delivered}: after {delay:.1f} s, in phase '{_last_phase(err.read())}'")
                continue
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(f"a resumed run failed (exit {proc.returncode}):\n{err.read()[-3000:]}")
            log(f"launch {launches} finished before its kill at {delay:.1f} s")
            break
    resumes = launches - 1
    if not (victim / "summary.json").exists() or delivered == launches:
        final = subprocess.run([*_cli(), "--resume", str(victim)], capture_output=True, text=True, env=env)
        if final.returncode != 0:
            raise RuntimeError(f"the final resume failed:\n{final.stderr[-3000:]}")
        resumes += 1
    diff = differences(reference, victim)
    return {"kills": delivered, "resumes": resumes, "identical": not diff, "differences": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="TOML file of config keys for `wml run`.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--corpus")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="Where the two runs go (default: a temporary folder).")
    opts = ap.parse_args()
    args = (["--config", opts.config] if opts.config else []) + (["--corpus", opts.corpus] if opts.corpus else [])
    for pair in opts.overrides:
        args += ["--set", pair]
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="wml-kill-"))
    result = kill_and_resume(args, workdir, opts.kills, opts.seed)
    verdict = "identical" if result["identical"] else "DIFFERENT: " + "; ".join(result["differences"])
    print(f"kills {result['kills']}, resumes {result['resumes']}, {verdict}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
