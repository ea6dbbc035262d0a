"""The fair experiment of docs/results.md (issue 24 §6), from data to verdict, resumable.

1. Data: the first sixteenth of each file of the development corpus for training, the next fortieth
   for held-out text (so both sample every source in proportion), written once into OUT/data/.
2. ``wml tune``: every method tuned with the same number of trials on the left-out seed 1337
   (objective: held-out loss on the ω half; the evaluated half is never seen).
3. ``wml compare --tuned``: every method with its tuned settings, plus the seed card's recipe
   (``wml_champion``), on seeds 1338-1340; held-out loss on the evaluated half, 13 paradigms × 1,000
   minimal pairs.

Each step is an ordinary ``wml`` command that continues where it stopped, so running this script
again (in a later session, say) picks up from there.

    python benchmarks/fair_experiment.py --data ../shared/data --out runs/fair [--trials 6] [--jobs 2]
    python benchmarks/fair_experiment.py ... --plan      # print the commands only
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "compare_fair.toml"
TUNED = ("wml", "wml_adam", "dml", "kd", "ce")
COMPARED = (*TUNED, "wml_champion")
TRAIN_SHARE, HELDOUT_SHARE = 16, 40


def make_data(source: Path, out: Path) -> None:
    """The first 1/16 of every file's lines for training, the next 1/40 held out (whole lines)."""
    train, heldout = out / "corpus", out / "heldout"
    if (out / "done").exists():
        return
    train.mkdir(parents=True, exist_ok=True)
    heldout.mkdir(parents=True, exist_ok=True)
    for path in sorted((source / "corpus").glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        a = len(lines) // TRAIN_SHARE
        b = a + len(lines) // HELDOUT_SHARE
        (train / path.name).write_text("".join(lines[:a]), encoding="utf-8")
        (heldout / path.name).write_text("".join(lines[a:b]), encoding="utf-8")
    (out / "done").write_text("")


def commands(data: Path, out: Path, trials: int, jobs: int, blimp: Path) -> list:
    shared = ["--config", str(CONFIG), "--corpus", str(data / "corpus"), "--set", f"val_corpus={data / 'heldout'}",
              "--set", f"blimp={blimp}", "--jobs", str(jobs)]
    tune = ["wml", "tune", "--method", ",".join(TUNED), "--trials", str(trials), *shared, "--out", str(out / "tune")]
    compare = ["wml", "compare", "--methods", ",".join(COMPARED), "--tuned", str(out / "tune"), "--seeds", "3",
               *shared, "--set", "seed=1338", "--out", str(out / "compare")]
    return [tune, compare]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the development data folder (corpus/, blimp-dev/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--plan", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    out = args.out.resolve()
    steps = commands(out / "data", out, args.trials, args.jobs, (args.data / "blimp-dev").resolve())
    for cmd in steps:
        print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.plan:
        return 0
    make_data(args.data.resolve(), out / "data")
    for cmd in steps:
        code = subprocess.call([sys.executable, "-m", "wml_framework.cli", *cmd[1:]])
        if code:
            print(f"stopped: {cmd[1]} exited {code}; run this script again to continue", file=sys.stderr)
            return code
    print(f"done: {out / 'compare' / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
