"""Cost of the WML loss and of one exact mirror update, against the baselines they replace.

Two measurements, for M = 2, 4, 8 peers on a batch of 3×512 tokens with a 16000-token vocabulary:

1. the ``wml`` loss forward+backward against M separate cross-entropy losses (``F.cross_entropy``
   per peer), on random float32 logits;
2. one ``mirror`` update (exact hypergradient + mirror step) against one inner forward+backward of
   all peers with the ``wml`` loss, on small LLaMA peers (hidden 64, 2 layers).

Time: each pair (baseline, candidate) runs back to back, ``--repeats`` times, on one thread; times
are CPU seconds of this process (user + system, so page faults count) with wall-clock beside them,
and the ratio reported is the median of the per-pair ratios, so a slow moment on a shared machine
hits both sides. The M = 8 loss case is also run at T = 2 (the non-default temperature path).
Memory, two ways, both real measurements: the bytes autograd saves for backward (summed in a
``torch.autograd.graph.saved_tensors_hooks`` pack hook, unique storages only), and the peak
resident set size of one run above the inputs, read from the kernel (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``; Linux only, n/a elsewhere) in a freshly spawned process per
measurement, so memory the allocator kept from earlier runs cannot hide any of it.

Results are printed and written to the ``bench_losses`` section of docs/performance.md (only
between its markers; other benchmarks own the rest of that file).

    python benchmarks/bench_losses.py            # default sizes, ~2-4 min on one CPU core
    python benchmarks/bench_losses.py --quick    # tiny sizes, seconds (what the test runs)
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from wml_framework.api import Batch, OuterContext
from wml_framework.runtime.atomic import replace_doc_section
from wml_plugins.losses.wml import WMLLoss
from wml_plugins.updaters.mirror import MirrorUpdater

DEFAULT_DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


# ----------------------------------------------------------------------------- measuring

class SavedBytes:
    """Sum of the bytes autograd saves for backward while the block runs (unique storages)."""

    def __init__(self):
        self.seen: set = set()
        self.bytes = 0

    def _pack(self, t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _status_bytes(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def peak_rss_above_start(fn: Callable[[], None]) -> int | None:
    """Peak resident memory during ``fn`` minus the resident memory before it (bytes)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    fn()
    peak = _status_bytes("VmHWM")
    return None if before is None or peak is None else max(peak - before, 0)


def paired_times(baseline: Callable[[], None], candidate: Callable[[], None], repeats: int) -> dict:
    """Run baseline and candidate back to back ``repeats`` times (after one warm-up each).

    Times are CPU seconds of this process (``time.process_time``: user + system, so page faults
    count) because with one thread they measure the work done even when other jobs share the
    cores; wall-clock medians are reported beside them.
    """
    baseline()
    candidate()
    tb, tc, wb, wc = [], [], [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        baseline()
        c1, w1 = time.process_time(), time.perf_counter()
        candidate()
        c2, w2 = time.process_time(), time.perf_counter()
        tb.append(c1 - c0)
        tc.append(c2 - c1)
        wb.append(w1 - w0)
        wc.append(w2 - w1)
    ratios = [c / b for b, c in zip(tb, tc)]
    return {"baseline_s": statistics.median(tb), "candidate_s": statistics.median(tc),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "baseline_wall_s": statistics.median(wb), "candidate_wall_s": statistics.median(wc),
            "wall_ratio": statistics.median([c / b for b, c in zip(wb, wc)])}


def peak_in_fresh_process(case: str, args: tuple, which: int) -> int | None:
    """``peak_rss_above_start`` of one run of a case's function ``which`` (0 baseline, 1 candidate)
    in a newly spawned interpreter, so memory the allocator kept from earlier runs cannot hide it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_peak_worker, (case, args, which, torch.get_num_threads()))


def _peak_worker(case: str, args: tuple, which: int, threads: int) -> int | None:
    torch.set_num_threads(threads)
    fns = CASES[case](*args)[which]
    return peak_rss_above_start(fns)


# ----------------------------------------------------------------------------- 1. the loss

def loss_case(M: int, batch: int, block: int, vocab: int, temperature: float):
    """(M separate CE losses fw+bw, wml loss fw+bw, saved-bytes probe) on fixed random logits."""
    g = torch.Generator().manual_seed(M)
    logits = [(3.0 * torch.randn(batch, block, vocab, generator=g)).requires_grad_() for _ in range(M)]
    labels = torch.randint(0, vocab, (batch, block), generator=g)
    omega = torch.full((M,), 1.0 / M, dtype=torch.float64)
    loss = WMLLoss(alpha=0.5, temperature=temperature)

    def ce_total():
        return sum(F.cross_entropy(z.view(-1, vocab), labels.view(-1)) for z in logits)

    def wml_total():
        return loss(logits, labels, omega).total

    def run(total_fn):
        def step():
            total_fn().backward()
            for z in logits:
                z.grad = None
        return step

    def saved_bytes(total_fn) -> int:
        with SavedBytes() as saved:
            total = total_fn()
        total.backward()
        for z in logits:
            z.grad = None
        return saved.bytes

    return run(ce_total), run(wml_total), {"ce": lambda: saved_bytes(ce_total), "wml": lambda: saved_bytes(wml_total)}


def bench_loss(M: int, batch: int, block: int, vocab: int, repeats: int, temperature: float) -> dict:
    args = (M, batch, block, vocab, temperature)
    separate_ce, wml, probes = loss_case(*args)
    out = paired_times(separate_ce, wml, repeats)
    out["ce_saved_bytes"], out["wml_saved_bytes"] = probes["ce"](), probes["wml"]()
    del separate_ce, wml, probes
    out["ce_peak_bytes"] = peak_in_fresh_process("loss", args, 0)
    out["wml_peak_bytes"] = peak_in_fresh_process("loss", args, 1)
    n, V = batch * block, vocab
    out.update(M=M, n=n, V=V, T=temperature, mnv_float32_bytes=M * n * V * 4)
    return out


# ----------------------------------------------------------------------------- 2. the mirror update

def _llama_peers(M: int, vocab: int, block: int, hidden: int, layers: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    peers = []
    for i in range(M):
        torch.manual_seed(100 + i)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=block, tie_word_embeddings=True)
        peers.append(AutoModelForCausalLM.from_config(cfg).train())
    return peers


def mirror_case(M: int, batch: int, block: int, vocab: int, hidden: int, layers: int, tangents: str):
    """(one inner forward+backward of all peers, one mirror update, phase timings of the last update)."""
    peers = _llama_peers(M, vocab, block, hidden, layers)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (batch, block + 1), generator=g)
    val_tokens = torch.randint(0, vocab, (batch, block + 1), generator=g)
    train = Batch(tokens[:, :-1], tokens[:, 1:])
    val = Batch(val_tokens[:, :-1], val_tokens[:, 1:])
    loss = WMLLoss(alpha=0.5, temperature=1.0)
    omega = torch.full((M,), 1.0 / M, dtype=torch.float64)
    updater = MirrorUpdater(M, tangents=tangents)
    ctx = OuterContext(peers=peers, loss=loss, omega=omega, train=train, val=val, inner_lr=0.01, outer_step=0)
    info: dict = {"params": sum(p.numel() for p in peers[0].parameters())}

    def inner_step():
        zs = [p(input_ids=train.inputs).logits for p in peers]
        loss(zs, train.labels, omega).total.backward()
        for p in peers:
            p.zero_grad(set_to_none=True)

    def mirror_update():
        updater.step(ctx)
        info.update(updater.last_seconds)

    return inner_step, mirror_update, info


def bench_mirror(M: int, batch: int, block: int, vocab: int, repeats: int, hidden: int, layers: int,
                 tangents: str) -> dict:
    args = (M, batch, block, vocab, hidden, layers, tangents)
    inner_step, mirror_update, info = mirror_case(*args)
    out = paired_times(inner_step, mirror_update, repeats)
    params = info.pop("params")
    out["phases_s"] = {k: round(v, 3) for k, v in info.items()}
    del inner_step, mirror_update
    out["inner_peak_bytes"] = peak_in_fresh_process("mirror", args, 0)
    out["mirror_peak_bytes"] = peak_in_fresh_process("mirror", args, 1)
    out.update(M=M, n=batch * block, V=vocab, hidden=hidden, layers=layers, tangents=tangents, params=params)
    return out


CASES = {"loss": loss_case, "mirror": mirror_case}


# ----------------------------------------------------------------------------- report

def _mb(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**20:.0f} MiB" if x >= 2**20 else f"{x / 2**10:.0f} KiB"


def render(loss_rows: list, mirror_rows: list, args, env: str) -> str:
    lines = [
        "## Loss and mirror-update cost (`benchmarks/bench_losses.py`)",
        "",
        f"Measured by `python benchmarks/bench_losses.py{' --quick' if args.quick else ''}` on {env}. "
        f"Times are medians over {args.repeats} back-to-back (baseline, candidate) pairs, in CPU seconds of "
        "the benchmark process (user + system, one thread: robust to other jobs on a shared machine; "
        "wall-clock medians in brackets). The ratio is the median of the per-pair CPU-time ratios, "
        "min–max beside it. *Saved* is what autograd keeps for backward (saved-tensor hooks, unique "
        "storages); *peak* is the kernel's peak resident set during one run above the inputs, measured "
        "in a freshly spawned process per cell (VmHWM after a reset through /proc/self/clear_refs).",
        "",
        f"**`wml` loss vs M separate cross-entropy losses** (forward+backward of random float32 logits, "
        f"n = {loss_rows[0]['n']} tokens, V = {loss_rows[0]['V']})",
        "",
        "| M | T | M×CE | wml | ratio (min–max) | CE saved | wml saved | wml saved / (M·n·V·4 B) | CE peak | wml peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in loss_rows:
        lines.append(
            f"| {r['M']} | {r['T']:g} | {r['baseline_s']:.3f} s ({r['baseline_wall_s']:.3f}) | "
            f"{r['candidate_s']:.3f} s ({r['candidate_wall_s']:.3f}) | **{r['ratio']:.2f}×** "
            f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {_mb(r['ce_saved_bytes'])} | {_mb(r['wml_saved_bytes'])} | "
            f"{r['wml_saved_bytes'] / r['mnv_float32_bytes']:.2f} | {_mb(r['ce_peak_bytes'])} | {_mb(r['wml_peak_bytes'])} |")
    if mirror_rows:
        r0 = mirror_rows[0]
        lines += [
            "",
            f"**One exact `mirror` update vs one inner forward+backward of all peers** (LLaMA peers: hidden "
            f"{r0['hidden']}, {r0['layers']} layers, {r0['params']:,} parameters each, V = {r0['V']}, tied "
            f"embeddings; train and validation batches of n = {r0['n']} tokens; `wml` loss, α = 0.5, T = 1; "
            f"ż by `{r0['tangents']}`). The phases are the wall seconds of the last update.",
            "",
            "| M | inner step | mirror update | ratio (min–max) | inner peak | mirror peak | mirror phases (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mirror_rows:
            phases = ", ".join(f"{k} {v}" for k, v in r["phases_s"].items())
            lines.append(
                f"| {r['M']} | {r['baseline_s']:.3f} s ({r['baseline_wall_s']:.3f}) | "
                f"{r['candidate_s']:.3f} s ({r['candidate_wall_s']:.3f}) | **{r['ratio']:.2f}×** "
                f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {_mb(r['inner_peak_bytes'])} | "
                f"{_mb(r['mirror_peak_bytes'])} | {phases} |")
    return "\n".join(lines) + "\n"


def write_section(doc: Path, body: str) -> None:
    """Replace (or append) only the text between this benchmark's markers."""
    replace_doc_section(doc, "bench_losses", body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): proves the script works")
    ap.add_argument("--peers", default=None, help="comma-separated peer counts (default 2,4,8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed pairs per case (default 5; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, OpenMP barriers make multi-threaded "
                         "timings of small ops meaningless)")
    ap.add_argument("--tangents", choices=["double_vjp", "jvp"], default="double_vjp")
    ap.add_argument("--skip-mirror", action="store_true")
    ap.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown file to update")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if args.quick:
        peers, batch, block, vocab, hidden, layers = [1, 2], 2, 16, 300, 16, 1
        args.repeats = args.repeats or 1
    else:
        peers, batch, block, vocab, hidden, layers = [2, 4, 8], 3, 512, 16000, 64, 2
        args.repeats = args.repeats or 5
    if args.peers:
        peers = [int(x) for x in args.peers.split(",")]
    torch.set_num_threads(args.threads)
    env = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
           f"torch {torch.__version__}, Python {platform.python_version()}")
    print(f"bench_losses: {env}", flush=True)

    loss_rows = []
    for M, T in [(M, 1.0) for M in peers] + [(max(peers), 2.0)]:
        r = bench_loss(M, batch, block, vocab, args.repeats, temperature=T)
        loss_rows.append(r)
        print(f"loss   M={M} T={T:g}: {M}×CE {r['baseline_s']:.3f}s  wml {r['candidate_s']:.3f}s  ratio {r['ratio']:.2f} "
              f"saved ce {_mb(r['ce_saved_bytes'])} wml {_mb(r['wml_saved_bytes'])} "
              f"peak ce {_mb(r['ce_peak_bytes'])} wml {_mb(r['wml_peak_bytes'])}", flush=True)
    mirror_rows = []
    if not args.skip_mirror:
        for M in peers:
            r = bench_mirror(M, batch, block, vocab, args.repeats, hidden, layers, args.tangents)
            mirror_rows.append(r)
            print(f"mirror M={M}: inner {r['baseline_s']:.3f}s  mirror {r['candidate_s']:.3f}s  ratio {r['ratio']:.2f} "
                  f"peak inner {_mb(r['inner_peak_bytes'])} mirror {_mb(r['mirror_peak_bytes'])} {r['phases_s']}",
                  flush=True)
    body = render(loss_rows, mirror_rows, args, env)
    print(body)
    if not args.no_write:
        write_section(args.doc, body)
        print(f"wrote the bench_losses section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
