"""Why mirror descent's ω loses to the fitted ω: a small measurement on a finished run.

On the run's final peers and fixed blocks of the ω half (the fit's own problem), it compares:
the trained ω; the fitted ω; mirror descent on that fixed, exact objective with the run's η
schedule and number of outer steps (and with 10× the steps); and mirror descent with the same
schedule where each step sees one fresh ω-half batch (the run's situation, with the peers frozen).
What differs between these isolates the cause: the η schedule and step count, or the objective.

    python benchmarks/omega_fit_probe.py RUN_DIR [--blocks 64]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from wml_framework.config import from_dict, read_toml
from wml_framework.evaluation.omega_fit import MixtureProblem, collect_problem, solve
from wml_framework.evaluation.run_reader import load_run
from wml_framework.text.tokens import prepare_for
from wml_framework.training.schedules import warmup_cosine
from wml_plugins.updaters.mirror import mirror_step


def descend(problem_at, cfg, steps: int, m: int) -> np.ndarray:
    w = torch.full((m,), 1.0 / m, dtype=torch.float64)
    for k in range(steps):
        eta = warmup_cosine(k, cfg.omega_lr, cfg.omega_min_lr, cfg.omega_warmup_iters, cfg.omega_decay_iters)
        _, g = problem_at(k).value_and_grad(w.numpy())
        w = mirror_step(w, torch.as_tensor(g), eta)
    return w.numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--blocks", type=int, default=64)
    args = ap.parse_args()
    raw = read_toml(f"{args.run_dir}/config.toml")
    cfg = from_dict(raw, check_plugins=False)
    run = load_run(args.run_dir, load_teacher=False, omega="trained")
    data = prepare_for(cfg, tokenizer=run.tokenizer, log=lambda m: None)
    problem, blocks = collect_problem(run.peers, data.val_omega, cfg.block_size, cfg.batch_size, args.blocks)
    per_batch = [MixtureProblem([c], [t]) for c, t in zip(problem.chunks, problem.targets)]
    outer_steps = cfg.max_steps // cfg.outer_every
    m = len(run.peers)
    fitted, fitted_loss, _ = solve(problem, run.omega)
    rows = {
        "trained ω (the run)": run.omega,
        "fitted ω (SLSQP)": fitted,
        f"mirror descent, fixed objective, {outer_steps} steps": descend(lambda k: problem, cfg, outer_steps, m),
        f"mirror descent, fixed objective, {10 * outer_steps} steps": descend(lambda k: problem, cfg, 10 * outer_steps, m),
        f"mirror descent, one fresh batch a step, {outer_steps} steps":
            descend(lambda k: per_batch[k % len(per_batch)], cfg, outer_steps, m),
        "uniform ω": np.full(m, 1.0 / m),
    }
    out = {"blocks": blocks, "positions": problem.positions, "outer_steps": outer_steps,
           "peer_losses": [problem.value(np.eye(m)[i]) for i in range(m)], "rows": {}}
    for name, w in rows.items():
        out["rows"][name] = {"omega": [round(float(x), 4) for x in w], "omega_half_loss": problem.value(w),
                             "gap_to_fitted": problem.value(w) - fitted_loss}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
