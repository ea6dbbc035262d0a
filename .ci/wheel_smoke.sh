#!/usr/bin/env bash
# The wheel, as a user gets it: built from this checkout, installed (not editable) into a fresh venv,
# and used from outside the source tree, so a package or data file left out of the wheel fails here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# from a clean copy of the files git knows (tracked, or new and not ignored): a stale build/ or
# *.egg-info in the checkout cannot slip a module into the wheel or hide one the build misses
mkdir "$work/src"
git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && xargs -0 cp --parents -t "$work/src" 2>/dev/null || true)
python3 -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -c "$root/constraints.txt" "$work"/dist/wml_framework-*.whl
cd "$work"                                   # nothing of the checkout is importable from here
wml="$work/venv/bin/wml"
"$work/venv/bin/python" - <<'PY'
import wml_framework, wml_plugins, wml_reference
for module in (wml_framework, wml_plugins, wml_reference):
    assert "site-packages" in module.__file__, f"{module.__name__} imported from {module.__file__}, not the wheel"
PY
"$wml" --help >/dev/null
for command in $("$work/venv/bin/python" -c "from wml_framework.cli import COMMANDS; print(' '.join(COMMANDS))"); do
    "$wml" "$command" --help >/dev/null
done
"$wml" plugins
"$wml" verify --only wml
tiny=(--set max_steps=3 --set lr_decay_iters=3 --set teacher_steps=3 --set eval_interval=3 --set eval_batches=1
      --set teacher_n_layer=1 --set teacher_n_embd=32 --set teacher_n_head=2 --set vocab_size=300
      --set block_size=32 --set batch_size=2 --set num_batches=1 --set num_peers=2 --set bayesian_init_points=2
      --set bayesian_n_iter=1 --set blimp_limit=5 --set perplexity.max_blocks=4 --set threads=1)
"$wml" run "${tiny[@]}" --out "$work/run"
test -f "$work/run/peers/peer_1/model.safetensors" && test -f "$work/run/eval.json" && test -f "$work/run/report.md"
"$wml" compare --methods wml,ce --seeds 1 "${tiny[@]}" --set max_steps=1 --set lr_decay_iters=1 --set outer_every=1 \
    --out "$work/compare"
test -f "$work/compare/comparison.md"
echo "wheel smoke test: passed ($(unzip -l "$work"/dist/wml_framework-*.whl | tail -1 | awk '{print $2}') files in the wheel)"
