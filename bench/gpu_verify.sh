#!/usr/bin/env bash
# The GPU path's verification, in parts that each fit a 10-minute slot of a lent GPU machine:
#   bash bench/gpu_verify.sh tests [pytest args]     # GPU tests (default: all of tests/test_gpu.py)
#   bash bench/gpu_verify.sh gsm8k DIR NAME          # GSM8K test pass@1 of model folder DIR (log: gsm8k_NAME.log)
#   bash bench/gpu_verify.sh train NAME [overrides]  # 20-step GRPO of SmolLM2 on GSM8K (default cluster=single_gpu)
#   bash bench/gpu_verify.sh sync [bench/sync.py args]  # weight-sync benchmark: SmolLM2-135M and a random 0.5B Qwen2
#   bash bench/gpu_verify.sh learn NAME [bench/learn_gsm8k.py args]  # GSM8K before, training, after, report card
#       (MODEL: the model to train, e.g. the model pack's /tmp/models/qwen2.5-coder-0.5b-instruct; the card and
#       the rows go to OUT/runs/NAME and OUT/RESULTS.md)
#   bash bench/gpu_verify.sh learn-bg NAME [args]  # the same in the background (setsid), from a private copy of the
#       repo in /tmp/rlpost-repo, results in /tmp/rlpost-bg: it outlives the call, not the lease (30 s idle, 30 min)
#   bash bench/gpu_verify.sh wait SECONDS          # progress of learn-bg until it ends or SECONDS pass, then its
#       results packed into OUT/bg.tar.gz. Chain these calls with no pause between them: the machine goes back
#       after 30 s without a call, and a background run goes with it.
# MODEL: a SmolLM2-135M-Instruct folder (default $KIT_MODEL); OUT: where logs and results go (default
# ./gpu-verify). A training run's folder is /tmp/rlpost-gpu-NAME (its hf_model is the "after" model).
# Two GPUs: CUDA_VISIBLE_DEVICES=0 / =1 on two of these at once, or `train split cluster=split`.
set -euo pipefail
MODEL=${MODEL:-${KIT_MODEL:?set MODEL to a SmolLM2-135M-Instruct folder}}
OUT=${OUT:-gpu-verify}
mkdir -p "$OUT"
# bench/gsm8k.py touches CUDA before vLLM starts its engine; NVLink multicast stays off on shared hosts.
export MODEL VLLM_WORKER_MULTIPROC_METHOD=spawn NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1
mode=${1:-}
shift || true
case "$mode" in
  tests)
    [ $# -gt 0 ] || set -- tests/test_gpu.py
    python3 -m pytest -q -m gpu -s --durations=0 "$@" 2>&1 | tee -a "$OUT/gpu_tests.log" ;;
  gsm8k)
    python3 -m bench.gsm8k --model "$1" --engine vllm --enforce-eager --results "$OUT/RESULTS.md" \
      2>&1 | tee "$OUT/gsm8k_$2.log" ;;
  train)
    name=$1; shift
    [ $# -gt 0 ] || set -- cluster=single_gpu
    run=/tmp/rlpost-gpu-$name
    python3 -m rlpost.train experiment=gsm8k_grpo_smollm2 model.path="$MODEL" trainer.run_dir="$run" \
      logger.progress=false eval.limit=128 "$@" 2>&1 | tee "$OUT/train_$name.log"
    mkdir -p "$OUT/$name"
    cp -r "$run"/metrics.jsonl "$run"/report.md "$run"/*.png "$run"/plots "$OUT/$name"/ 2>/dev/null || true ;;
  learn)
    name=$1; shift
    python3 -m bench.learn_gsm8k "$name" --model "$MODEL" --results "$OUT/RESULTS.md" --runs "$OUT/runs" "$@" \
      2>&1 | tee "$OUT/learn_$name.log" ;;
  learn-bg)
    bg=/tmp/rlpost-bg
    rm -rf /tmp/rlpost-repo "$bg" && mkdir -p /tmp/rlpost-repo "$bg"
    cp -r bench configs rewards rlpost pyproject.toml /tmp/rlpost-repo/
    cd /tmp/rlpost-repo
    OUT=$bg PYTHONPATH=/tmp/rlpost-repo:${PYTHONPATH:-} setsid nohup bash bench/gpu_verify.sh learn "$@" \
      > "$bg/console.log" 2>&1 < /dev/null &
    echo $! > "$bg/pid"
    echo "started learn $* in the background (pid $(cat "$bg/pid")); follow it with: bash bench/gpu_verify.sh wait S" ;;
  wait)
    bg=/tmp/rlpost-bg
    [ -f "$bg/pid" ] || { echo "no background run on this machine (a fresh machine: the lease was lost)"; exit 3; }
    end=$((SECONDS + ${1:-540}))
    # /tmp/lease_t0 (epoch seconds, written by the first call of a lease): return 40 s before the 30-minute end.
    if [ -f /tmp/lease_t0 ]; then
      left=$(( $(cat /tmp/lease_t0) + 1760 - $(date +%s) ))
      [ $((SECONDS + left)) -lt $end ] && end=$((SECONDS + left))
    fi
    while kill -0 "$(cat "$bg/pid")" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    grep -E "\[rlpost\]|\[learn_gsm8k\]|rror" "$bg/console.log" | tail -n 25 || true
    kill -0 "$(cat "$bg/pid")" 2>/dev/null && echo "still running" || echo "finished"
    # issue 15's study: each arm's summary, phase logs, metrics and the pair file (not checkpoints or models)
    tar czf "$OUT/bg.tar.gz" -C / tmp/rlpost-bg $(cd / && ls -d tmp/rlpost-learn-*/report.md tmp/rlpost-learn-*/plots \
      tmp/rlpost-learn-*/metrics.jsonl tmp/rlpost-learn-*/learn_*.log tmp/rlpost-study-*/*.json \
      tmp/rlpost-study-*/*.log tmp/rlpost-study-*/*/metrics.jsonl tmp/rlpost-study-*/pairs.jsonl 2>/dev/null) ;;
  sync)
    python3 -m bench.sync --model "$MODEL" --qwen05b /tmp/qwen2-0.5b-random "$@" 2>&1 | tee -a "$OUT/sync.log" ;;
  *)
    echo "usage: bash bench/gpu_verify.sh tests|gsm8k|train|learn|learn-bg|wait|sync ..." >&2; exit 2 ;;
esac
