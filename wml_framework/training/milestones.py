"""Word-milestone checkpoints and the word budget of the BabyLM 2025 tracks.

Why words and not steps: the 2025 rules ask for checkpoints by the words a model has trained on
(repeats included): every 1M words up to 10M, every 10M up to 100M, and on the strict track every
100M up to 1B; the pipeline's scripts and ``collate_preds.py`` know them by the names ``chck_1M``,
``chck_2M`` …. The training loop counts words exactly (each token carries how many whitespace-
separated words begin in it); when a step carries the count past a milestone, every peer is written
as a Hugging Face folder (the champion is only known at the end), and at the end the champion's
milestones are gathered where the pipeline evaluates them.

The budget they are counted against is :mod:`.word_budget`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from ..runtime.atomic import atomic_directory, atomic_write_json
from ..runtime.run_layout import RunLayout, peer_name
from .export import save_model, stamp_objective

__all__ = ["milestone_units", "milestone_name", "WordMilestones", "written_milestones", "gather_champion",
           "milestone_branches", "MILESTONE_FILE"]
#: written last into a milestone folder: the milestone is whole when it is there
MILESTONE_FILE = "milestone.json"


def milestone_units(track: str) -> list[int]:
    """The milestones of ``track`` in millions of words: 1…9, 10…100 by 10, then (strict) 200…1000."""
    units = list(range(1, 10)) + list(range(10, 101, 10))
    if track == "strict":
        units += list(range(200, 1001, 100))
    return units


def milestone_name(units: int) -> str:
    """``chck_<k>M``: the name the pipeline's scripts and ``collate_preds.py`` expect."""
    return f"chck_{units}M"


class WordMilestones:
    """Writes every peer at each milestone the words trained on pass (rank 0 only; resumes keep the
    milestones already written: a milestone a killed run missed is crossed again by the steps the
    resume repeats)."""

    def __init__(self, run_dir: Path, track: str, unit_words: int, tokenizer, objective_name: str,
                 objective_options: dict, objective, log=print):
        self.layout, self.unit_words, self.tokenizer = RunLayout(run_dir), int(unit_words), tokenizer
        self.units = milestone_units(track)
        self.objective = (objective_name, dict(objective_options), objective)
        self.log = log

    def crossed(self, words_before: int, words_after: int) -> list[int]:
        """The milestones (in units) a step from ``words_before`` to ``words_after`` words passes."""
        return [k for k in self.units if words_before < k * self.unit_words <= words_after]

    def after_step(self, loop, words_before: int) -> None:
        for k in self.crossed(words_before, loop.state.words):
            name = milestone_name(k)
            if (self.layout.milestone(name) / MILESTONE_FILE).exists():
                continue                         # written before an interruption; the same weights
            self.write(loop, name, k)

    def write(self, loop, name: str, units: int) -> None:
        obj_name, options, objective = self.objective
        with atomic_directory(self.layout.milestone(name)) as tmp:
            for i, peer in enumerate(loop.peers):
                stamp_objective(peer, obj_name, options, objective)
                save_model(peer, self.tokenizer, tmp / peer_name(i))
            atomic_write_json(tmp / MILESTONE_FILE, {
                "name": name, "milestone_words": units * self.unit_words, "words": loop.state.words,
                "step": loop.state.step, "tokens": loop.state.tokens, "unit_words": self.unit_words})
        self.log(f"milestone {name}: {loop.state.words:,} words trained on (step {loop.state.step}); "
                 f"every peer written to {self.layout.milestone(name)}")


def written_milestones(run_dir: Path) -> list[tuple[int, Path]]:
    """(units, folder) of every whole milestone of a run, in order."""
    root = RunLayout(run_dir).milestones
    found = []
    for d in root.glob("chck_*M") if root.is_dir() else []:
        try:
            units = int(d.name[len("chck_"):-1])
        except ValueError:
            continue
        if (d / MILESTONE_FILE).exists():
            found.append((units, d))
    return sorted(found)


def gather_champion(run_dir: Path, champion: str, model_name: str, backend: str, log=print, *,
                    git_branches: bool = False) -> Optional[Path]:
    """The champion's milestones as ``babylm/<chck_kM>/<model_name>/`` (the layout the pipeline's
    ``eval_zero_shot_fast.sh`` evaluates a local path in: for a local path it ignores the revision,
    so each revision is its own folder, all of one name), and ``babylm/eval_all_revisions.sh``,
    which runs the pipeline on each. Files are hard links where the file system allows."""
    layout = RunLayout(run_dir)
    found = written_milestones(run_dir)
    if not found:
        return None
    with atomic_directory(layout.babylm) as tmp:
        for units, folder in found:
            dest = tmp / milestone_name(units) / model_name
            dest.mkdir(parents=True)
            for f in (folder / champion).iterdir():
                try:
                    os.link(f, dest / f.name)
                except OSError:
                    shutil.copy2(f, dest / f.name)
        names = " ".join(milestone_name(u) for u, _ in found)
        script = tmp / "eval_all_revisions.sh"
        script.write_text(_EVAL_SCRIPT.format(names=names, model=model_name, backend=backend))
        script.chmod(0o755)
        atomic_write_json(tmp / "milestones.json", {
            "model_name": model_name, "champion": champion, "backend": backend,
            "revisions": [json.loads((f / MILESTONE_FILE).read_text()) for _, f in found]})
    log(f"babylm: the champion's {len(found)} milestone(s) gathered in {layout.babylm} "
        f"(evaluate them with {layout.babylm / 'eval_all_revisions.sh'} PIPELINE_DIR)")
    if git_branches:
        milestone_branches(layout.babylm / "hub", [(milestone_name(u), f / champion) for u, f in found],
                           layout.champion, log)
    return layout.babylm


def milestone_branches(repo: Path, revisions: list[tuple[str, Path]], final: Path, log=print) -> Optional[Path]:
    """A git repository of the champion whose branches are its milestones (``chck_1M`` …) and whose
    ``main`` is the final model: the Hub's layout (one repository, a branch per checkpoint), ready
    for ``git push --all``. ``*.safetensors`` go through git-lfs where it is installed (the Hub
    wants large files so)."""
    git = shutil.which("git")
    if git is None:
        log("warning: babylm_git_branches: git is not installed; no branches written")
        return None

    def run(*args):
        subprocess.run([git, "-c", "user.name=wml", "-c", "user.email=wml@localhost", *args], cwd=repo,
                       check=True, capture_output=True, text=True)

    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    run("init", "-q")
    run("checkout", "-q", "-b", "main")
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    for name, folder in [*revisions, ("main", final)]:
        for old in repo.iterdir():
            if old.name not in (".git", ".gitattributes"):
                old.unlink()
        for f in folder.iterdir():
            shutil.copy2(f, repo / f.name)
        # copies keep their sources' times and sizes, and may get a freed inode back: git's stat
        # cache would take a new model for the old one; without an index every file is hashed
        (repo / ".git" / "index").unlink(missing_ok=True)
        run("add", "-A")
        run("commit", "-q", "--allow-empty", "-m", f"{name}: the champion at {name}" if name != "main" else "the final champion")
        if name != "main":
            run("branch", name)
    log(f"babylm: git branches {', '.join(n for n, _ in revisions)} and main in {repo} "
        f"(push them all with: git -C {repo} push --all <remote>)")
    return repo


_EVAL_SCRIPT = """#!/bin/bash
# Runs the BabyLM 2025 pipeline's fast zero-shot evaluation on every milestone of this run's champion.
# Usage: eval_all_revisions.sh PIPELINE_DIR [EVAL_DIR]   (EVAL_DIR default: evaluation_data/fast_eval)
# Results go to PIPELINE_DIR/results/{model}/<revision>/; then run the pipeline's collate_preds.py
# (strict-small wants every revision chck_1M … chck_100M). A task whose data is missing fails in the
# pipeline's script and the others go on, as when it is run by hand; the revisions all go on too.
set -uo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
pipeline="${{1:?usage: $0 PIPELINE_DIR [EVAL_DIR]}}"
eval_dir="${{2:-evaluation_data/fast_eval}}"
cd "$pipeline" || exit 1
for revision in {names}; do
    echo "Evaluating ${{revision}}"
    bash eval_zero_shot_fast.sh "$here/$revision/{model}" "$revision" {backend} "$eval_dir"
done
"""
