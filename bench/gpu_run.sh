#!/usr/bin/env bash
# The prepared GPU run: CUDA checks, then the throughput figures the README's table needs.
#
#     bash bench/gpu_run.sh        # one CUDA GPU; estimated ~8 minutes on an H200 (not yet run)
#
# Needs python3 with torch, transformers, accelerate, safetensors, numpy, tqdm, psutil, pyyaml
# (not dvc, dvclive or pydantic: GPU images may lack them). Steps run most important first,
# each under its own time limit, and a failed step does not stop the others, so a single run
# yields every figure it can; the first four fit a 10-minute limit (570 s of step limits),
# the rest are extras a caller's limit may cut. Each step's stdout and stderr are kept under
# $OUT (the device tool's output folder) or /tmp/gpu_run as it runs, so a cut run still
# returns what finished; the exit status is 1 if any step failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
out="${OUT:-/tmp/gpu_run}"
mkdir -p "$out"
failed=0

step() { # name, time limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" 2>"$out/$name.err" | tee "$out/$name.out"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "=== $name: exit $rc; last lines of its stderr:"
    tail -n 8 "$out/$name.err"
    failed=1
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, '/ transformers', transformers.__version__)"

bench="python3 bench/train_throughput.py --rounds 1 --warmup 5 --steps 20"
# 1. what only a GPU runs: bf16, pinned prefetch, Triton kernels, CUDA graphs, NVML, MFU
step gpu_check 120 python3 bench/gpu_check.py
# 2. the acceptance figure: GPT-2 124M, batch 32 x 1024, bf16, ours vs Trainer, eager and compiled
step gpt2 270 $bench --model gpt2-124m
# 3. the levers: a larger batch, CUDA graphs, autotuned matmuls (ours, compiled)
step gpt2_batch64 90 $bench --model gpt2-124m --batch-size 64 --variants ours_compile
step gpt2_cudagraphs 90 $bench --model gpt2-124m --compile-mode reduce-overhead --variants ours_compile
step llama 90 $bench --model llama-124m --variants ours_compile
step gpt2_autotune 240 $bench --model gpt2-124m --compile-mode max-autotune-no-cudagraphs --variants ours_compile

echo "=== summary (each bench's last line is its JSON)"
for f in "$out"/*.out; do
  echo "$(basename "$f" .out): $(grep -E '^(ratio|ours_compile|hf_trainer_compile|gpu_check:)' "$f" | tr '\n' ' ')"
done
exit "$failed"
