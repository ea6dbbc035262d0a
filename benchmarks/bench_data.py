"""Benchmark: tokenizing a corpus at BabyLM scale (10M and 100M words), throughput and peak memory.

    python benchmarks/bench_data.py --source ../shared/data/corpus --words 10e6,100e6 [--write-doc docs/performance.md]

The corpus of each size is the source folder's text repeated until it has that many words (the
BabyLM strict track is 100M words). Each measurement runs in a fresh process, so its peak resident
memory (``ru_maxrss``) is its own:

- **wml**: ``tokens.prepare`` with a given tokenizer: reading, cleaning, document splitting,
  encoding and writing the train/held-out streams to disk, end to end;
- **tokenizers**: the library's own batch encoding (``encode_batch`` and ``encode_batch_fast``) of the
  same documents, timing only the encode calls: the ceiling the first can approach.

The ratio wml / tokenizers (fast) is measured in one run, so it holds across machines; the absolute
rates do not (these machines are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_corpus(source: Path, words: int, out: Path) -> Path:
    """``out/`` holding the source files' text repeated until ``words`` words (file by file)."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.iterdir() if p.is_file())
    texts = [(f.name, f.read_text(encoding="utf-8", errors="replace")) for f in files]
    per_round = sum(len(t.split()) for _, t in texts)
    rounds = max(1, round(words / per_round))
    for name, text in texts:
        with open(out / name, "w", encoding="utf-8") as fh:
            for _ in range(rounds):
                fh.write(text if text.endswith("\n") else text + "\n")
    return out


def _child(kind: str, corpus: str, tokenizer_dir: str, cache: str) -> dict:
    """One measurement, run in its own process (see main)."""
    from transformers import AutoTokenizer

    from wml_framework.text.corpus import iter_documents, plan_corpus
    from wml_framework.text.tokenizer import present
    from wml_framework.text.tokens import document_batches, prepare

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    t0 = time.perf_counter()
    if kind == "wml":
        data = prepare(corpus, len(tok), 0.05, tokenizer=tok, cache=Path(cache), log=lambda m: None, progress=False)
        tokens = len(data.train) + len(data.val)
        seconds = time.perf_counter() - t0
    else:
        backend = tok.backend_tokenizer
        encode = backend.encode_batch_fast if kind == "tokenizers-fast" else backend.encode_batch
        tokens, seconds = 0, 0.0
        for batch in document_batches(iter_documents(plan_corpus(corpus).train)):
            texts = [present(d) for d in batch]
            start = time.perf_counter()
            encodings = encode(texts, add_special_tokens=True)
            seconds += time.perf_counter() - start
            tokens += sum(len(e) for e in encodings)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": rss_mb}


def measure(kind: str, corpus: Path, tokenizer_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(corpus), str(tokenizer_dir), cache],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_once(corpus: Path, vocab: int, out: Path) -> dict:
    """Train the BPE tokenizer on the smallest corpus (streamed), in its own process."""
    proc = subprocess.run([sys.executable, __file__, "--train", str(corpus), str(vocab), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_child(corpus: str, vocab: int, out: str) -> dict:
    from wml_framework.text.corpus import iter_documents, plan_corpus
    from wml_framework.text.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    tok = train_tokenizer(iter_documents(plan_corpus(corpus).train), vocab)
    tok.save_pretrained(out)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(_child(*sys.argv[2:6])))
        return 0
    if sys.argv[1:2] == ["--train"]:
        print(json.dumps(_train_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "corpus"))
    ap.add_argument("--words", default="10e6,100e6", help="Comma-separated corpus sizes in words.")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--workdir", help="Where the corpora are built (default: a temporary folder).")
    ap.add_argument("--write-doc", help="Markdown file whose 'bench-data' section is replaced by the results.")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wml-bench-data-"))
    sizes = [int(float(w)) for w in args.words.split(",")]
    rows = []
    tokenizer_dir, training = work / "tokenizer", None
    for words in sizes:
        corpus = build_corpus(Path(args.source), words, work / f"corpus-{words}")
        if training is None:
            training = train_once(corpus, args.vocab, tokenizer_dir)
            print(f"tokenizer training on {words / 1e6:.0f}M words: {training['seconds']:.0f} s, "
                  f"peak {training['peak_rss_mb']:.0f} MB", flush=True)
        results = {kind: measure(kind, corpus, tokenizer_dir) for kind in ("wml", "tokenizers", "tokenizers-fast")}
        ratio = results["wml"]["tokens_per_s"] / results["tokenizers-fast"]["tokens_per_s"]
        rows.append((words, results, ratio))
        print(f"{words / 1e6:.0f}M words: " + "; ".join(
            f"{k} {r['tokens_per_s'] / 1e6:.2f}M tok/s, peak {r['peak_rss_mb']:.0f} MB" for k, r in results.items())
            + f"; wml / tokenizers-fast = {ratio:.2f}", flush=True)
    if args.write_doc:
        from wml_framework.runtime.atomic import replace_doc_section

        lines = ["## Data: tokenizing a corpus at BabyLM scale", "",
                 f"Command: `python benchmarks/bench_data.py --source ../shared/data/corpus --words {args.words} "
                 f"--write-doc docs/performance.md` (corpora: the development corpus repeated; vocabulary {args.vocab}; "
                 f"{os.cpu_count()} cores).", "",
                 "| corpus | tokens | wml: prepare, end to end | tokenizers `encode_batch` | tokenizers `encode_batch_fast` | wml / fast | wml peak memory |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for words, r, ratio in rows:
            lines.append(f"| {words / 1e6:.0f}M words | {r['wml']['tokens'] / 1e6:.1f}M | {r['wml']['tokens_per_s'] / 1e6:.2f}M tok/s "
                         f"| {r['tokenizers']['tokens_per_s'] / 1e6:.2f}M tok/s | {r['tokenizers-fast']['tokens_per_s'] / 1e6:.2f}M tok/s "
                         f"| **{ratio:.2f}** | {r['wml']['peak_rss_mb']:.0f} MB |")
        lines += ["", f"Tokenizer training (streamed, {sizes[0] / 1e6:.0f}M words): {training['seconds']:.0f} s, peak "
                  f"{training['peak_rss_mb']:.0f} MB.", "",
                  "*wml* reads, cleans and splits documents, encodes them through the tokenizers library (BOS and EOS "
                  "added there) and writes the train and held-out streams; the *tokenizers* columns time only the "
                  "library's encode calls on the same documents, held in memory batch by batch. Peak memory is the "
                  "process's resident peak (`ru_maxrss`), library and model code included."]
        replace_doc_section(Path(args.write_doc), "bench-data", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
