#!/usr/bin/env bash
# The prepared GPU run: CUDA checks, then the throughput figures of bench/RESULTS.md's table (one
# CUDA GPU; estimated ~8 minutes on an H200, not yet run; python3 with torch, transformers,
# accelerate, pyyaml, psutil, not dvc/dvclive/pydantic). Most important first, each step under
# its own time limit, a failed one not stopping the others; outputs go to $OUT (or
# /tmp/gpu_run) as they come, so a cut run returns what finished. Exit 1 if any step failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
out="${OUT:-/tmp/gpu_run}" failed=0 && mkdir -p "$out"
step() { # name, time limit in seconds, command...
  local name=$1 limit=$2 && shift 2
  echo "=== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" 2>"$out/$name.err" | tee "$out/$name.out"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "=== $name failed:"; tail -n 8 "$out/$name.err"; failed=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
bench="python3 bench/train_throughput.py --rounds 1 --warmup 5 --steps 20"
step gpu_check 120 python3 bench/gpu_check.py                          # what only a GPU runs
step gpt2 270 $bench --model gpt2-124m                 # the acceptance figure: ours vs Trainer
step gpt2_batch64 90 $bench --model gpt2-124m --batch-size 64 --variants ours_compile
step gpt2_cudagraphs 90 $bench --model gpt2-124m --compile-mode reduce-overhead --variants ours_compile
step llama 90 $bench --model llama-124m --variants ours_compile
step gpt2_autotune 240 $bench --model gpt2-124m --compile-mode max-autotune-no-cudagraphs --variants ours_compile
step checkpoints 120 $bench --model gpt2-124m --checkpoints 50 --steps 60
for f in "$out"/*.out; do echo "$(basename "$f" .out): $(grep -E '^(ratio|ours|hf_trainer|overhead|gpu_check:)' "$f" | tr '\n' ' ')"; done
exit "$failed"
