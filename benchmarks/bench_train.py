"""Benchmark: what one training step costs, side by side, and how close the peers get to the hardware.

    python benchmarks/bench_train.py [--threads 1,2] [--rounds 60] [--write-doc docs/performance.md]
    python benchmarks/bench_train.py --nproc 2 [--write-doc docs/performance.md]    # data-parallel scaling

Four variants train copies of the same peers on the same batches, interleaved round by round in one
process, so a slow moment on a shared machine hits all of them:

- **plain**: a plain loop, peer by peer: Hugging Face forward, ``F.cross_entropy``, backward, clip,
  AdamW;
- **trainer ce + uniform**, **trainer wml + uniform**, **trainer wml + mirror**: wml's own training loop
  (``TrainingLoop``: inner step, and for ``mirror`` an outer step every ``outer_every`` steps, records
  logged), with that loss and updater.

The peers are those of the default run (the ``bayes`` peers of the default teacher, random weights).
Step cost is the median time per optimizer step, relative to the plain loop. MFU is model FLOPs
(6·N per token for the matmul parameters N, i.e. every parameter but an untied input embedding,
plus 12·L·d·T per token for attention) over the matmul peak measured in the same process (fp32 on CPU,
bf16 on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("plain", "ce+uniform", "wml+uniform", "wml+mirror")


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of square matmuls (the ceiling MFU is measured against), best of a few timed bursts."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            a @ b
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size ** 3 * n / (time.perf_counter() - t0))
    return best


def step_flops(peers, tokens: int) -> float:
    """6·N_matmul·tokens + 12·L·d·T·tokens, summed over peers (the MFU numerator of one step)."""
    total = 0.0
    for p in peers:
        n = sum(x.numel() for x in p.parameters())        # each tensor once, so a tied head counts once
        embedding, head = p.get_input_embeddings().weight, p.get_output_embeddings().weight
        if embedding is not head:                         # an untied input embedding is a lookup, no FLOPs
            n -= embedding.numel()
        c = p.config
        layers = getattr(c, "num_hidden_layers", None) or c.n_layer
        width = getattr(c, "hidden_size", None) or c.n_embd
        total += (6 * n + 12 * layers * width * BLOCK[0]) * tokens
    return total


BLOCK = [128]


def default_peers(cfg, device):
    """The default run's peers: ``bayes`` sizing of the default teacher (random weights)."""
    from transformers import AutoModelForCausalLM

    from wml_framework.api import peer_targets
    from wml_framework.plugin_system.host import PluginHost
    from wml_framework.training.objective_fit import default_family
    from wml_framework.training.teacher import teacher_config

    class Vocab:  # what teacher_config reads of a tokenizer
        bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

        def __len__(self):
            return cfg.vocab_size

    host = PluginHost()
    objective = host.create("objective", cfg.objective, cfg)
    family = host.create("family", default_family(cfg, objective))
    hf = teacher_config(family, cfg, Vocab(), max_positions=max(cfg.block_size, 256))
    teacher = AutoModelForCausalLM.from_config(hf)
    targets = peer_targets(family.count_parameters(hf), cfg.num_peers)
    init = host.create("initializer", "bayes", cfg)
    result = init.build(teacher, family, targets, seed=cfg.seed)
    return [p.to(device).train() for p in result.peers], result.rows, family.shape_string(hf)


def shared_batches(cfg, tokens: int = 400_000):
    """Token data whose training batch is the one the benchmark hands every variant this round."""
    from wml_framework.text.tokens import TokenData

    class SharedBatch(TokenData):
        current = None

        def batch(self, split, batch_size, block_size, gen):
            return self.current if split == "train" else super().batch(split, batch_size, block_size, gen)

    rng = np.random.default_rng(0)
    return SharedBatch(rng.integers(3, cfg.vocab_size, tokens).astype(np.uint16),
                       rng.integers(3, cfg.vocab_size, tokens // 10).astype(np.uint16), None, cfg.vocab_size)


def autocast(device: torch.device):
    """A fresh bf16 autocast context on CUDA (what ``bf16 = true`` gives the trainer), none on a CPU."""
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def make_plain(peers, cfg, device):
    opts = [torch.optim.AdamW(p.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                              weight_decay=cfg.weight_decay) for p in peers]

    def step(x, y):
        for peer, opt in zip(peers, opts):
            with autocast(device):                  # bf16 on a GPU, as the trainer's default
                logits = peer(input_ids=x).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(peer.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def make_trainer(peers, cfg, device, loss: str, updater: str, run_dir: Path):
    from wml_framework.plugin_system.host import PluginHost
    from wml_framework.runner import create_plugins
    from wml_framework.training.loop import TrainingLoop

    host = PluginHost()
    c = cfg.replace(loss=loss, updater=updater)
    plugins = create_plugins(c, host)
    loop = TrainingLoop(c, host, peers, shared_batches(c), run_dir, device, loss=plugins.loss,
                        updater=plugins.updater, log=lambda m: None)

    def step(x, y):
        loop.data.current = (x, y)
        loop.step()
    return step


def run(threads: int, rounds: int, device: torch.device, settings: dict | None = None) -> dict:
    from wml_framework import config as cfgmod

    torch.set_num_threads(threads)
    fixed = {"threads": str(threads)} if "threads" in cfgmod.FIELDS else {}   # no thread probing mid-benchmark
    cfg = cfgmod.from_dict({"device": device.type, "max_steps": 10_000, "eval_interval": 10_000,
                            "checkpoint_interval": 10_000, **fixed, **(settings or {})})
    BLOCK[0] = cfg.block_size
    torch.manual_seed(0)
    peers, rows, teacher_shape = default_peers(cfg, device)
    work = Path(tempfile.mkdtemp(prefix="wml-bench-train-"))
    steps = {"plain": make_plain(copy.deepcopy(peers), cfg, device)}
    for name in VARIANTS[1:]:
        loss, updater = name.split("+")
        (work / name).mkdir()
        steps[name] = make_trainer(copy.deepcopy(peers), cfg, device, loss, updater, work / name)
    gen = torch.Generator().manual_seed(1)
    stream = np.random.default_rng(2).integers(3, cfg.vocab_size, 200_000)
    times = {n: [] for n in VARIANTS}
    every = cfg.outer_every
    total_rounds = max(rounds, every) + every          # at least one whole outer cycle is timed
    for r in range(total_rounds):
        starts = torch.randint(len(stream) - cfg.block_size - 1, (cfg.batch_size,), generator=gen).tolist()
        rows_ = torch.from_numpy(np.stack([stream[s:s + cfg.block_size + 1] for s in starts]).astype(np.int64))
        x, y = rows_[:, :-1].to(device), rows_[:, 1:].to(device)
        for name in VARIANTS:
            t0 = time.perf_counter()
            steps[name](x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= every:               # the first outer_every rounds warm up
                times[name].append(time.perf_counter() - t0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    tokens = cfg.batch_size * cfg.block_size * cfg.num_batches
    flops = step_flops(peers, tokens)
    # mirror's outer step comes every outer_every steps: its cost per step is the median over whole
    # cycles (outer_every consecutive steps, one outer step each) of the cycle's mean
    per_step = {n: (statistics.median(statistics.mean(t[k:k + every]) for k in range(0, len(t) - every + 1, every))
                    if n == "wml+mirror" else statistics.median(t)) for n, t in times.items()}
    return {"threads": threads, "device": str(device), "peak_flops": peak, "flops_per_step": flops,
            "peers": [f"{r['shape']} ({r['parameters']:,})" for r in rows], "teacher": teacher_shape,
            "seconds": per_step, "ratio": {n: per_step[n] / per_step["plain"] for n in VARIANTS},
            "mfu": {n: flops / per_step[n] / peak for n in VARIANTS}, "tokens_per_s": tokens / per_step["plain"],
            "outer_every": every}


def scaling_worker(rounds: int, settings: dict) -> dict:
    """One rank's timing of the wml + mirror trainer on the default peers (run under torchrun, or alone)."""
    from wml_framework import config as cfgmod
    from wml_framework.runtime import distributed

    dist = distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    cfg = cfgmod.from_dict({"device": "cpu", "max_steps": 10_000, "eval_interval": 10_000,
                            "checkpoint_interval": 10_000, "threads": "1", **settings})
    BLOCK[0] = cfg.block_size
    torch.manual_seed(0)
    peers = dist.broadcast(default_peers(cfg, torch.device("cpu"))[0] if dist.is_main else None)
    work = Path(tempfile.mkdtemp(prefix="wml-bench-scaling-"))
    step = make_trainer(peers, cfg, torch.device("cpu"), "wml", "mirror", work)
    gen = torch.Generator().manual_seed(1)
    stream = np.random.default_rng(2).integers(3, cfg.vocab_size, 200_000)
    every, times = cfg.outer_every, []
    for r in range(max(rounds, every) + every):      # at least one whole outer cycle is timed
        starts = torch.randint(len(stream) - cfg.block_size - 1, (cfg.batch_size,), generator=gen).tolist()
        rows_ = torch.from_numpy(np.stack([stream[s:s + cfg.block_size + 1] for s in starts]).astype(np.int64))
        dist.barrier()
        t0 = time.perf_counter()
        step(rows_[:, :-1], rows_[:, 1:])
        if r >= every:
            times.append(time.perf_counter() - t0)
    per_step = statistics.median(statistics.mean(times[k:k + every]) for k in range(0, len(times) - every + 1, every))
    slowest = max(dist.gather(per_step))              # a data-parallel step lasts as long as its slowest rank
    distributed.shutdown()
    return {"world": dist.world, "seconds": slowest, "tokens": cfg.batch_size * cfg.block_size * cfg.num_batches}


def scaling(nproc: int, rounds: int, set_args: list[str]) -> dict:
    """Seconds per step of 1 process and of ``nproc`` torchrun processes (one thread each)."""
    import json
    import subprocess

    def launch(n: int) -> dict:
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1
               else [sys.executable])
        cmd += [str(Path(__file__).resolve()), "--scaling-worker", "--rounds", str(rounds)]
        for item in set_args:
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))

    one, many = launch(1), launch(nproc)
    return {"nproc": nproc, "one": one["seconds"], "many": many["seconds"], "tokens": one["tokens"],
            "speedup": one["seconds"] / many["seconds"], "efficiency": one["seconds"] / many["seconds"] / nproc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--write-doc")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config change, e.g. teacher_n_layer=12 --set teacher_n_embd=768 for a ~100M teacher")
    ap.add_argument("--nproc", type=int, help="measure data-parallel scaling: 1 process against NPROC torchrun "
                    "processes (wml + mirror trainer, one thread each) instead of the four variants")
    ap.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from wml_framework.config import parse_overrides

    settings = parse_overrides(args.set)
    if args.scaling_worker:
        import json

        res = scaling_worker(args.rounds, settings)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(res), flush=True)
        return 0
    if args.nproc:
        res = scaling(args.nproc, args.rounds, args.set)
        print(f"1 process: {res['one']:.3f} s/step; {res['nproc']} processes: {res['many']:.3f} s/step; "
              f"speed-up {res['speedup']:.2f}x, efficiency {100 * res['efficiency']:.0f}%", flush=True)
        if args.write_doc:
            from wml_framework.runtime.atomic import replace_doc_section

            lines = ["## Data-parallel scaling (`benchmarks/bench_train.py --nproc`)", "",
                     f"Command: `python benchmarks/bench_train.py --nproc {args.nproc} --rounds {args.rounds} "
                     "--write-doc docs/performance.md`: the `wml` + `mirror` trainer on the default peers and the "
                     f"default global batch ({res['tokens']:,} tokens a step), one process against {args.nproc} "
                     f"torchrun processes (gloo), one torch thread each, {os.cpu_count()} CPU cores.", "",
                     "| processes | seconds a step | speed-up | scaling efficiency |", "|---:|---:|---:|---:|",
                     f"| 1 | {res['one']:.3f} | 1.00× | 100% |",
                     f"| {args.nproc} | {res['many']:.3f} | {res['speedup']:.2f}× | {100 * res['efficiency']:.0f}% |"]
            replace_doc_section(Path(args.write_doc), "bench-scaling", "\n".join(lines))
        return 0
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          (args.device if args.device != "auto" else "cpu"))
    results = []
    for t in (int(x) for x in args.threads.split(",")):
        res = run(t, args.rounds, device, settings)
        results.append(res)
        print(f"{t} thread(s): " + "; ".join(f"{n} {res['ratio'][n]:.2f}x (MFU {100 * res['mfu'][n]:.1f}%)"
                                             for n in VARIANTS) + f"; peak {res['peak_flops'] / 1e9:.0f} GFLOP/s",
              flush=True)
    if args.write_doc:
        from wml_framework.runtime.atomic import replace_doc_section

        first = results[0]
        lines = ["## Training step: the trainer against a plain loop", "",
                 f"Command: `python benchmarks/bench_train.py --threads {args.threads} --rounds {args.rounds} "
                 "--write-doc docs/performance.md`.", "",
                 f"Peers of the default run (teacher {first['teacher']}): {', '.join(first['peers'])}; "
                 f"{first['device']}; outer step every {first['outer_every']} steps.", "",
                 "| variant | " + " | ".join(f"cost, {r['threads']} thread(s)" for r in results) + " | "
                 + " | ".join(f"MFU, {r['threads']} thread(s)" for r in results) + " |",
                 "|---|" + "---:|" * (2 * len(results))]
        for n in VARIANTS:
            lines.append(f"| {n} | " + " | ".join(f"{r['ratio'][n]:.2f}×" for r in results) + " | "
                         + " | ".join(f"{100 * r['mfu'][n]:.1f}%" for r in results) + " |")
        lines += ["", "Matmul peak measured in the same process: "
                  + ", ".join(f"{r['peak_flops'] / 1e9:.0f} GFLOP/s ({r['threads']} thread(s))" for r in results)
                  + ". Plain-loop throughput: " + ", ".join(f"{r['tokens_per_s']:,.0f} tokens/s ({r['threads']})"
                                                             for r in results) + "."]
        replace_doc_section(Path(args.write_doc), "bench-train", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
