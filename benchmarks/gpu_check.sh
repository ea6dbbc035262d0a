#!/usr/bin/env bash
# The GPU path in one go, for a machine with one CUDA GPU (under 8 minutes on one H200-class GPU):
#   1. the tests marked `cuda` (autocast in bf16, peers placed on cuda:0, …);
#   2. bench_train.py --device cuda in bf16 on the default peers and on the peers of a ~100M teacher;
#   3. a 50-step `wml run` in bf16, with peer_placement = replicate and = spread (on a machine of one
#      GPU, spread places every peer on cuda:0 as replicate does: it checks the code path, not a speed-up;
#      with several GPUs visible it spreads them);
# then writes what it measured to the `gpu-check` section of docs/performance.md.
#
#   bash benchmarks/gpu_check.sh            (from the repository root, the project installed)
set -uo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp -d)"
status=0
step() {  # step NAME COMMAND…: run it, keep its output, remember a failure and go on
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name"
    if "$@" >"$log/$name.txt" 2>&1; then echo "ok ($((SECONDS - t0)) s)" | tee -a "$log/summary.txt"
    else status=1; echo "FAILED ($((SECONDS - t0)) s): $(tail -3 "$log/$name.txt" | tr '\n' ' ')" | tee -a "$log/summary.txt"; fi
    sed -i "\$s/^/$name: /" "$log/summary.txt"
}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$log/gpu.txt" 2>/dev/null || true

step tests python -m pytest -q -p no:cacheprovider -m cuda
step bench_default python benchmarks/bench_train.py --device cuda --threads 1 --rounds 30 --set bf16=true
step bench_100m python benchmarks/bench_train.py --device cuda --threads 1 --rounds 10 --set bf16=true \
    --set teacher_n_layer=12 --set teacher_n_embd=768 --set teacher_n_head=12 --set block_size=512
run_args=(--set device=cuda --set bf16=true --set max_steps=50 --set lr_decay_iters=50 --set teacher_steps=200
          --set eval_interval=25 --set perplexity.max_blocks=64 --set blimp_limit=100)
step run_replicate wml run "${run_args[@]}" --set peer_placement=replicate --out "$log/run-replicate"
step run_spread wml run "${run_args[@]}" --set peer_placement=spread --out "$log/run-spread"

python - "$log" <<'PY'
import json, subprocess, sys
import torch
from pathlib import Path
from wml_framework.runtime.atomic import replace_doc_section

log = Path(sys.argv[1])
def lines(name, keep=lambda l: True):
    p = log / f"{name}.txt"
    return [l for l in p.read_text().splitlines() if keep(l)] if p.exists() else []
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
body = ["## The GPU path (`benchmarks/gpu_check.sh`)", "",
        f"Command: `bash benchmarks/gpu_check.sh` at commit {commit or '?'}, on "
        f"{(log / 'gpu.txt').read_text().strip() if (log / 'gpu.txt').exists() else 'a CUDA GPU'}.", "",
        "| check | result |", "|---|---|"]
body += [f"| {l.split(': ', 1)[0]} | {l.split(': ', 1)[1]} |" for l in lines("summary")]
body += ["", "CUDA-marked tests: " + (lines("tests")[-1] if lines("tests") else "not run"), ""]
for name, title in (("bench_default", "default peers"), ("bench_100m", "peers of a ~100M teacher")):
    body += [f"bench_train.py, bf16, {title}: " + "; ".join(lines(name, lambda l: "thread(s):" in l)), ""]
for name in ("run-replicate", "run-spread"):
    s = log / name / "summary.json"
    if s.exists():
        summary = json.loads(s.read_text())
        body.append(f"`wml run` 50 steps, {name[4:]} (GPUs visible: {torch.cuda.device_count()}): "
                    f"{summary['elapsed_s']} s, ensemble held-out loss "
                    f"{summary['ensemble_val_loss']:.4f}, ω {[round(w, 3) for w in summary['omega']]}")
replace_doc_section(Path("docs/performance.md"), "gpu-check", "\n".join(body))
print("\n".join(body))
PY
exit $status
