#!/usr/bin/env bash
# The GPU path's verification on one GPU, in parts that each fit a 10-minute slot of a lent GPU machine:
#   bash bench/gpu_verify.sh tests [pytest args]  # GPU tests (default: all of tests/test_gpu.py)
#   bash bench/gpu_verify.sh train   # GSM8K pass@1 before, 20-step GRPO (cluster=single_gpu), GSM8K after
#   bash bench/gpu_verify.sh sync    # weight-sync benchmark: SmolLM2-135M and a random ~0.5B Qwen2
# MODEL: a SmolLM2-135M-Instruct folder (default $KIT_MODEL); OUT: where logs and results go (default
# ./gpu-verify); RUN: the training run folder (default /tmp/rlpost-gpu-run).
set -euo pipefail
MODEL=${MODEL:-${KIT_MODEL:?set MODEL to a SmolLM2-135M-Instruct folder}}
OUT=${OUT:-gpu-verify}
RUN=${RUN:-/tmp/rlpost-gpu-run}
mkdir -p "$OUT"
export MODEL VLLM_WORKER_MULTIPROC_METHOD=spawn  # bench/gsm8k.py touches CUDA before vLLM starts its engine
case "${1:-}" in
  tests)
    shift
    [ $# -gt 0 ] || set -- tests/test_gpu.py
    python3 -m pytest -q -m gpu -s --durations=0 "$@" 2>&1 | tee "$OUT/gpu_tests.log" ;;
  train)
    python3 bench/gsm8k.py --model "$MODEL" --engine vllm --enforce-eager --results "$OUT/RESULTS.md" \
      2>&1 | tee "$OUT/gsm8k_before.log"
    python3 -m rlpost.train experiment=gsm8k_grpo_smollm2 cluster=single_gpu model.path="$MODEL" \
      trainer.run_dir="$RUN" logger.progress=false eval.limit=128 2>&1 | tee "$OUT/train.log"
    cp -r "$RUN"/metrics.jsonl "$RUN"/report.md "$RUN"/*.png "$RUN"/plots "$OUT"/ 2>/dev/null || true
    python3 bench/gsm8k.py --model "$RUN/hf_model" --engine vllm --enforce-eager --results "$OUT/RESULTS.md" \
      2>&1 | tee "$OUT/gsm8k_after.log" ;;
  sync)
    python3 bench/sync.py --model "$MODEL" --qwen05b /tmp/qwen2-0.5b-random 2>&1 | tee "$OUT/sync.log" ;;
  *)
    echo "usage: bash bench/gpu_verify.sh tests|train|sync" >&2; exit 2 ;;
esac
