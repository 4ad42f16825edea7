#!/usr/bin/env bash
# One lease of this project's lent GPU machine, scripted: the device kit and the model pack staged in the
# background while the parts still arrive, then a measured run that fits what is left of the lease. Runs on the
# device machine, in the repo root. (The machine goes back after ~30 s without a call and 30 minutes after it
# started; device time is 30 minutes a session: see ../shared/device/README.md for the parts.)
#
# Calls, back to back with nothing in between (folders prepared as in ../shared/device/README.md; LEFT = the first
# call's lease.budget_left_s less ~10):
#   carry .kit00:        echo $(( $(date +%s) - 90 )) > /tmp/lease_t0; mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/
#   carry .kit01:        echo $(( $(date +%s) + LEFT - 1800 )) > /tmp/lease_t0; mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/
#   carry .kit02:        mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/
#   carry .kit03:        mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/ && bash bench/gpu_lease.sh kit-bg
#   carry .model00..08:  mkdir -p /tmp/mp && cp .model*/* /tmp/mp/
#   carry .model09:      mkdir -p /tmp/mp && cp .model*/* /tmp/mp/ && bash bench/gpu_lease.sh model-bg \
#                          [&& bash bench/gpu_lease.sh quick]        # GPU tests while the model converts (~3 min;
#                                                                    # they delay the run: leave out once passed)
#   then one of:         [RETRY_WITH="k=v ..."] bash bench/gpu_lease.sh learn NAME [bench/learn_gsm8k.py args] -- [overrides]
#                        (followed by `bash bench/gpu_lease.sh wait 300` calls until it says "finished")
#                        THEN="NAME2 [args] -- [overrides]" ... learn NAME ...: a second run after the first, the
#                        same minutes each (session 14's lease, PPO then online DPO, 7.2 min of training each, 1,676 s in all):
#                          RETRY_WITH="rollout.kv_cache_gb=0 rollout.gpu_memory_utilization=0.25" \
#                          THEN='online_dpo --experiment gsm8k_online_dpo_qwen05b --skip-before --before "0.2578 340 1319"' \
#                          bash bench/gpu_lease.sh learn ppo --experiment gsm8k_ppo_qwen05b --skip-before \
#                          --before "0.2578 340 1319"
#                        bash bench/gpu_lease.sh trl               (carry .trl: rlpost and TRL side by side;
#                                                                   then `wait 300` calls)
#                        bash bench/gpu_lease.sh study adbc        (issue 15; session 15's lease, from the kit's
#                          last call: `mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/ && bash bench/gpu_lease.sh kit-bg &&
#                          bash bench/gpu_lease.sh study adbc`, it waits for the model; then `wait 300` calls:
#                          a, d and b came back, c was cut at step 3. Session 16's lease:
#                          STUDY_THEN='ad --tag v2 --rm-epochs 8' bash bench/gpu_lease.sh study c: c (10.0 min),
#                          pairs (5.3), a-v2 (3.7), d-v2's RM (4.5), its GRPO cut. Session 17's, (d) with the
#                          fix of RM pairing, on session 16's pairs (no sampling), the same way:
#                          STUDY_ARGS='--pairs bench/runs/online_vs_offline/lease2/pairs.jsonl.gz' \
#                          STUDY_THEN='ad --tag v3 --offline-epochs 1 --rm-epochs 8' bash bench/gpu_lease.sh study d
#                          (d 12.8 minutes with a cold compile cache, a-v3 3.8, d-v3 lost at its RM's step 5);
#                          then, on the CPU machine, `python -m bench.online_vs_offline --merge
#                          bench/runs/online_vs_offline/lease1 .../lease2 .../lease3 --baseline a-v3`.)
# Or two runs in one lease, the first on the kit's SmolLM2 while the model pack is still arriving (the GPU is idle
# then), the second (TRL side by side) once the model is converted:
#   carry .kit03:        mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/ && bash bench/gpu_lease.sh kit-bg && \
#                          MODEL_DIR=/tmp/models/smollm2-135m-instruct RESERVE=870 NEXT=trl-run \
#                          bash bench/gpu_lease.sh learn NAME --experiment gsm8k_grpo_smollm2_format --skip-before \
#                          --before "0.0212 28 1319"
#   carry .model00..08:  as above
#   carry .model09 .trl: mkdir -p /tmp/mp /tmp/trl-wheels && cp .model*/* /tmp/mp/ && cp .trl/* /tmp/trl-wheels/ \
#                          && bash bench/gpu_lease.sh model-bg
#   then `wait 300` calls. (SmolLM2's 60 steps take ~10 minutes with start-up, GSM8K after included; TRL side by
#   side ~10: RESERVE=870 keeps the second's time back from the first's trainer.max_minutes.)
# Or a measurement on the kit while the model pack arrives, then a run on the model pack (session 12's plan):
#   carry .kit03:        mkdir -p /tmp/kit && cp .kit*/* /tmp/kit/ && bash bench/gpu_lease.sh kit-bg && \
#                          FIRST="rollout both" FIRST_MAX=600 \
#                          RETRY_WITH="rollout.kv_cache_gb=0 rollout.gpu_memory_utilization=0.25" \
#                          bash bench/gpu_lease.sh learn ppo --experiment gsm8k_ppo_qwen05b --skip-before \
#                          --before "0.2578 340 1319"
#   carry .model00..08:  as above;  carry .model09: mkdir -p /tmp/mp && cp .model*/* /tmp/mp/ && bash bench/gpu_lease.sh model-bg
#   then `wait 300` calls. (The run's trainer.max_minutes is computed once FIRST is done.)
# If a 2-GPU kind (nvidia-h200-x2) is ever lent, issue 16's staleness goals (engines on a GPU of their own): after
# the same staging, with the kit's env (the `learn` path runs bench.learn_gsm8k through gpu_verify.sh the same way):
#   python3 -m bench.vs_trl --model $QWEN --device cuda --micro 16 --rlpost-cluster split \
#     --rlpost-override trainer.max_staleness=1 --rlpost-override algo.off_policy_correction=tis
#   python3 -m bench.learn_gsm8k grpo-stale1 --model $QWEN --cluster split --skip-before --before "0.2578 340 1319" \
#     -- trainer.max_staleness=1 algo.off_policy_correction=tis algo.old_logprobs=learner rollout.engines_per_gpu=1
#   (and the same with trainer.max_staleness=0 for the on-policy curve on the same layout)
# `wait` hands back the results so far each time. Two ways to lose the machine: taken back during a call (session
# 10: the steps since the last wait's return were lost) or a gap of ~30 s between calls (session 12: the caller's
# turn was interrupted; the run itself was lost at step 36). Each gap is a chance of the second, which costs the
# whole run, so the waits are long (300 s; the call limit is 600).
#
# Modes:
#   kit-bg     unpack the kit (no smoke test) in the background: /tmp/kit-install.log, .rc
#   model-bg   wait for the kit, then convert the model pack in the background: /tmp/model-install.log, .rc
#   quick      wait for the kit: the GPU tests most worth a first look + bench.vocab, into $OUT
#   rollout [smollm2|qwen05b|both]  bench.rollout, two engine actors against one vllm.LLM at batch 256 (issue
#              16's engines_per_gpu), on the kit's SmolLM2, a random-weight Qwen2-0.5B (no model pack needed), or
#              both one after the other (~4 min each), into $OUT/rollout_<model>.log; as learn's FIRST
#              (FIRST="rollout both" FIRST_MAX=600) it runs on the kit while the model pack still arrives
#   learn      bench/learn_gsm8k.py in the background from a private copy of the repo, once its model is there
#              (the model pack's, or MODEL_DIR's from the kit), with trainer.max_minutes from the lease's end
#              (/tmp/lease_t0 + 1800 s) less RESERVE seconds (start-up, the final evaluation, export and GSM8K
#              after). RETRY_WITH="k=v ...": if the run dies before its first step (e.g. two engines do not fit),
#              it runs again with those overrides added (e.g. rollout.engines_per_gpu=1). Afterwards NEXT (a
#              background mode, e.g. trl-run) if set; else, on the model pack with time left, `bench`.
#   wait [S]   bench/gpu_verify.sh wait: progress until the run ends or S seconds pass, then $OUT/bg.tar.gz
#   bench      bench.learner on the model pack: GSM8K rollout lengths (profiled) and fixed 1024-token sequences
#   study ARMS in the background: bench.online_vs_offline --arms ARMS (issue 15) once the model is converted, the
#              GSM8K "before" reused. Arms run in the order given, each leaving its arm_<key>.json once its
#              GSM8K after is done, and `wait` brings those back (study-*/): so `study adbc` goes on while the
#              lease lasts, the next lease runs the arms still missing (`study c` after session 15), and
#              `python -m bench.online_vs_offline --merge DIR DIR` joins the leases' arms into one table and plot.
#              Estimates from session 14's runs (actors up in 149 s on a fresh machine, 76 s once vLLM's compile
#              cache is warm; ~25 s from the last step to the export with no final checkpoint (~50 with one);
#              GSM8K after ~90 s; 512 samples a step in ~6.5 s): pairs ~5.5 minutes (16,384 samples), a ~3.5,
#              d (RM, then 16 GRPO steps) ~6.5, b and c ~6.5 each: ~28.5 in all, against the ~24.5 a lease has
#              once the model is converted (~4.4 minutes in).
#              So a, d and perhaps b in the first lease (a and d need the pairs, which do not outlive it).
#              An arm that fails is one line and the others go on. CPU dry run of the whole path (session 14,
#              ~2 minutes; fake kit: /tmp/site/_kit/env.sh sourcing the venv, /tmp/model-install.rc = 0,
#              /tmp/lease_t0 = now): STUDY_ARGS='--model TINY --engine hf --cluster debug_cpu --samples 16
#              --group 4 --prompts-per-step 2 --limit 2 --dpo-experiment gsm8k_grpo_debug --grpo-experiment
#              gsm8k_grpo_debug --verifier $PWD/tests/rewards_for_tests.py --verifier-name text_length --
#              rollout.max_new_tokens=8 learner.num_ranks=1 rollout.num_engines=1 reward.num_workers=1
#              eval.limit=2 eval.num_samples=0' OUT=/tmp/out bash bench/gpu_lease.sh study adbc, then `wait`
#   trl        in the background: bench.vs_trl, both sides, two engines for rlpost (TRL 1.16.0 + accelerate 1.16.0 wheels from .trl:
#              `pip download trl==1.16.0 accelerate==1.16.0 --no-deps -d .trl` on the CPU machine); if 7 minutes
#              are left, rlpost alone again with rollout.kv_cache_gb=4
set -uo pipefail
mode=${1:-}; shift || true
QWEN=/tmp/models/qwen2.5-coder-0.5b-instruct
# learn's model (the kit's SmolLM2 needs no model pack: MODEL_DIR=/tmp/models/smollm2-135m-instruct) and the seconds it
# keeps back from the lease, per run: start-up ~110 s (actors up in 96 s in session 12, engines and learners built side
# by side; ~250 s before), final evaluation, checkpoint and export ~60-150 s (sessions 7 and 8), GSM8K after ~90 s,
# packing the results and a margin.
MODEL_DIR=${MODEL_DIR:-$QWEN}; RESERVE=${RESERVE:-360}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
left() { echo $(( $(cat /tmp/lease_t0) + 1800 - $(date +%s) )); }
minutes() { python3 -c "print(max(2.0, round(($1) / 60, 1)))"; }  # minutes SECONDS_EXPR: trainer.max_minutes, >= 2
wait_rc() {  # wait_rc FILE SECONDS: wait until FILE exists; print its content (an exit code) or "timeout"
  local end=$((SECONDS + $2)); while [ ! -f "$1" ] && [ $SECONDS -lt $end ]; do sleep 2; done
  cat "$1" 2>/dev/null || echo timeout
}
in_background() {  # in_background MODE: this script's MODE from a private copy of the repo, output in /tmp/rlpost-bg
  rm -rf /tmp/rlpost-repo && mkdir -p /tmp/rlpost-repo && cp -r bench configs rewards rlpost pyproject.toml /tmp/rlpost-repo/
  # The background script writes its own pid: under job control `setsid` forks, so $! would be a parent that is gone.
  (cd /tmp/rlpost-repo && setsid nohup bash -c 'echo $$ > /tmp/rlpost-bg/pid; exec bash bench/gpu_lease.sh "$0"' "$1" \
     > /tmp/rlpost-bg/console.log 2>&1 < /dev/null &)
  sleep 1
  echo "started $1 (pid $(cat /tmp/rlpost-bg/pid)); lease left $(left) s"
}
save_learn_args() {  # save_learn_args DIR NAME [learn_gsm8k args] [-- overrides]: one argument a line, into DIR
  mkdir -p "$1"; echo "$2" > "$1/name"; local dir=$1; shift 2
  local args=() over=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift; over=("$@")
  # none: an empty file (printf of an empty array would write one empty line)
  : > "$dir/args"; : > "$dir/over"
  [ ${#args[@]} -eq 0 ] || printf '%s\n' "${args[@]}" > "$dir/args"
  [ ${#over[@]} -eq 0 ] || printf '%s\n' "${over[@]}" > "$dir/over"
}
run_learn() {  # run_learn DIR MINUTES: the run save_learn_args saved in DIR, with trainer.max_minutes=MINUTES
  local name args over mins=$2 attempt rc extra retry=${RETRY_WITH:-}
  name=$(cat "$1/name"); mapfile -t args < "$1/args"; mapfile -t over < "$1/over"
  for attempt in 1 2; do
    echo "[lease] $name attempt $attempt: max_minutes=$mins overrides: ${over[*]}"
    MODEL=$MODEL_DIR OUT=/tmp/rlpost-bg bash bench/gpu_verify.sh learn "$name" "${args[@]}" -- "${over[@]}" \
      trainer.max_minutes="$mins"
    rc=$?
    echo "[lease] $name rc=$rc; lease left $(left) s"
    [ $rc = 0 ] && break
    # metrics.jsonl's first line is the step-0 evaluation: without it the run never got going
    [ -n "$retry" ] && [ ! -s /tmp/rlpost-learn-"$name"/metrics.jsonl ] || break
    read -ra extra <<< "$retry"; over+=("${extra[@]}")
    echo "[lease] trying again with $retry"; rm -rf /tmp/rlpost-learn-"$name"; retry=
    mins=$(minutes "min($mins * 60, $(left) - $RESERVE)")
  done
}
kit_env() { source /tmp/site/_kit/env.sh; export PYTHONPATH=$PWD:${PYTHONPATH:-} VLLM_WORKER_MULTIPROC_METHOD=spawn; }
case "$mode" in
  kit-bg)
    rm -f /tmp/kit-install.rc
    setsid nohup bash -c 'python3 /tmp/kit/install-kit.py --no-smoke > /tmp/kit-install.log 2>&1; echo $? > /tmp/kit-install.rc' \
      > /dev/null 2>&1 < /dev/null &
    echo "kit install started; lease left $(left) s" ;;
  model-bg)
    rc=$(wait_rc /tmp/kit-install.rc 400); tail -n 3 /tmp/kit-install.log; echo "kit rc=$rc"
    rm -f /tmp/model-install.rc
    setsid nohup bash -c "python3 /tmp/mp/install-model.py --parts /tmp/mp > /tmp/model-install.log 2>&1; echo \$? > /tmp/model-install.rc" \
      > /dev/null 2>&1 < /dev/null &
    echo "model conversion started; lease left $(left) s" ;;
  quick)
    rc=$(wait_rc /tmp/kit-install.rc 400); [ "$rc" = 0 ] || { echo "kit rc=$rc"; tail /tmp/kit-install.log; exit 3; }
    kit_env
    python3 -m pytest -q -m gpu -s tests/test_gpu.py::test_learner_attention_backward_is_finite \
      tests/test_gpu.py::test_compiled_vocab_kernels_match_eager \
      "tests/test_gpu.py::test_colocated_ipc_sync_and_logprob_agreement[bfloat16-0]" \
      2>&1 | tail -n 30 | tee "$OUT/quick_tests.log"
    python3 -m bench.vocab 2>&1 | tail -n 25 | tee "$OUT/vocab.log"
    echo "lease left $(left) s" ;;
  learn)
    bg=/tmp/rlpost-bg
    rm -rf "$bg" && mkdir -p "$bg"
    save_learn_args "$bg/run1" "$@"
    # THEN is split as the shell splits a command line (quotes kept: --before "0.2578 340 1319")
    [ -z "${THEN:-}" ] || { eval "then_words=($THEN)"; save_learn_args "$bg/run2" "${then_words[@]}"; }
    RETRY_WITH=${RETRY_WITH:-} MODEL_DIR=$MODEL_DIR RESERVE=$RESERVE NEXT=${NEXT:-} FIRST=${FIRST:-} \
      FIRST_MAX=${FIRST_MAX:-420} \
      in_background learn-run ;;
  learn-run)  # the background part of `learn`, in /tmp/rlpost-repo
    bg=/tmp/rlpost-bg
    # FIRST is a mode and its arguments; it may not cost the run more than FIRST_MAX seconds (a hang would cost the
    # lease): 7 minutes unless said (`rollout both` took 7.8 in session 12, waiting for the kit's unpacking included)
    # shellcheck disable=SC2086
    if [ -n "${FIRST:-}" ] && ! OUT=$bg timeout "${FIRST_MAX:-420}" bash bench/gpu_lease.sh $FIRST; then
      # timeout stops the mode's shell, not the benchmark under it
      echo "[lease] FIRST ($FIRST) failed or timed out; stopping what it left"; pkill -f -- "-m bench\.rollout"
      kit_env; ray stop --force > /dev/null 2>&1
    fi
    # the model pack's conversion, or the kit (with its SmolLM2), may still be under way
    if [ "$MODEL_DIR" = "$QWEN" ]; then
      rc=$(wait_rc /tmp/model-install.rc 600); [ "$rc" = 0 ] || { echo "model rc=$rc"; tail /tmp/model-install.log; exit 3; }
    else
      rc=$(wait_rc /tmp/kit-install.rc 600); [ "$rc" = 0 ] || { echo "kit rc=$rc"; tail /tmp/kit-install.log; exit 3; }
    fi
    kit_env
    if [ -d "$bg/run2" ]; then
      # two runs, the same minutes each: half of the training time that two runs' RESERVEs leave (the second
      # fewer if the first overran); what the first leaves of its RESERVE is the second's margin
      mins=$(minutes "($(left) - 2 * $RESERVE) / 2")
      run_learn "$bg/run1" "$mins"
      run_learn "$bg/run2" "$(minutes "min($mins * 60, $(left) - $RESERVE)")"
    else
      run_learn "$bg/run1" "$(minutes "$(left) - $RESERVE")"
    fi
    if [ -n "${NEXT:-}" ]; then exec bash bench/gpu_lease.sh "$NEXT"; fi
    if [ "$MODEL_DIR" = "$QWEN" ] && [ "$(left)" -gt 260 ]; then OUT=$bg bash bench/gpu_lease.sh bench; fi ;;
  rollout)
    rc=$(wait_rc /tmp/kit-install.rc 400); [ "$rc" = 0 ] || { echo "kit rc=$rc"; tail /tmp/kit-install.log; exit 3; }
    kit_env
    # One bench.rollout per model, so that a cut second one keeps the first's table. The kit's SmolLM2 lends the
    # tokenizer to the random-weight Qwen2-0.5B that the bench builds (`--skip-model`: that model alone).
    which=${1:-smollm2}; [ "$which" = both ] && which="smollm2 qwen05b"
    for m in $which; do
      models=(--model /tmp/models/smollm2-135m-instruct)
      [ "$m" = qwen05b ] && models+=(--qwen05b /tmp/qwen2-0.5b-random --skip-model)
      python3 -m bench.rollout "${models[@]}" --batches 256 --reps 3 --engines-per-gpu 2 --kv-cache-gb 4 \
        --results "$OUT/RESULTS.md" 2>&1 | grep --line-buffered -v "^(\|INFO\|WARN" > "$OUT/rollout_$m.log"
      tail -n 12 "$OUT/rollout_$m.log"; echo "[rollout] $m done; lease left $(left) s"
    done ;;
  wait)
    MODEL=$QWEN bash bench/gpu_verify.sh wait "${1:-300}"
    grep "^|\|faster than\|slower than\|^rlpost step\|^trl step" /tmp/rlpost-bg/console.log 2>/dev/null | tail -n 40 ;;  # vs_trl
  bench)
    kit_env
    python3 -m bench.learner --model $QWEN --stages 0 --seqs 256 --micro 32 --seq-len 640 --lengths rollout \
      --orders sorted --tied 0 --profile 15 2>&1 | tail -n 40 | tee "$OUT/bench_learner.log"
    python3 -m bench.learner --model $QWEN --stages 0 --seqs 128 --micro 16 --seq-len 1024 --lengths fixed \
      --orders sorted --tied 0 2>&1 | tail -n 25 | tee -a "$OUT/bench_learner.log"
    echo "lease left $(left) s" ;;
  study)  # in the background: issue 15's arms $1 (e.g. adbc, then what is missing in a later lease), once the model is there
    # STUDY_ARGS: more bench.online_vs_offline arguments, split as a command line (the CPU dry run: --model TINY
    # --engine hf --cluster debug_cpu ... -- overrides; later options win)
    # STUDY_THEN="ARMS [arguments]": a second study after the first, e.g. a variant of the protocol
    # (STUDY_THEN='ad --tag v2 --rm-epochs 8'), in a run folder of its own
    rm -rf /tmp/rlpost-bg && mkdir -p /tmp/rlpost-bg && echo "$1" > /tmp/rlpost-bg/arms
    echo "${STUDY_ARGS:-}" > /tmp/rlpost-bg/study_args; echo "${STUDY_THEN:-}" > /tmp/rlpost-bg/study_then
    in_background study-run ;;
  study-run)  # the background part of `study`, in /tmp/rlpost-repo
    bg=/tmp/rlpost-bg; arms=$(cat $bg/arms); eval "study_args=($(cat $bg/study_args))"
    rc=$(wait_rc /tmp/model-install.rc 600); [ "$rc" = 0 ] || { echo "model rc=$rc"; tail /tmp/model-install.log; exit 3; }
    kit_env
    python3 -m bench.online_vs_offline --model $QWEN --arms "$arms" --skip-before --before "0.2578 340 1319" \
      --run-dir /tmp/rlpost-study-"$arms" --results "$bg/RESULTS.md" --plot "$bg/runs/online_vs_offline_$arms.png" \
      "${study_args[@]}"
    echo "lease left $(left) s"
    eval "then=($(cat $bg/study_then))"
    if [ ${#then[@]} -gt 0 ]; then
      python3 -m bench.online_vs_offline --model $QWEN --arms "${then[0]}" --skip-before --before "0.2578 340 1319" \
        --run-dir /tmp/rlpost-study-then-"${then[0]}" --results "$bg/RESULTS.md" \
        --plot "$bg/runs/online_vs_offline_then.png" "${then[@]:1}" "${study_args[@]}"
      echo "lease left $(left) s"
    fi ;;
  trl)  # in the background (both sides take ~10 minutes, more than one call may run): follow it with `wait`
    rm -rf /tmp/rlpost-bg /tmp/trl-wheels && mkdir -p /tmp/rlpost-bg /tmp/trl-wheels && cp .trl/*.whl /tmp/trl-wheels/
    in_background trl-run ;;
  trl-run)  # the background part of `trl` (or learn's NEXT), in /tmp/rlpost-repo
    bg=/tmp/rlpost-bg
    rc=$(wait_rc /tmp/model-install.rc 600); [ "$rc" = 0 ] || { echo "model rc=$rc"; tail /tmp/model-install.log; exit 3; }
    rm -rf /tmp/trl-site && mkdir -p /tmp/trl-site
    for w in /tmp/trl-wheels/*.whl; do python3 -m zipfile -e "$w" /tmp/trl-site || exit 3; done  # pure-Python wheels
    kit_env; export PYTHONPATH=$PYTHONPATH:/tmp/trl-site
    python3 -m bench.vs_trl --model $QWEN --device cuda --micro 16 --rlpost-override rollout.engines_per_gpu=2 \
      --results "$bg/RESULTS.md"
    # Time left: rlpost alone with a KV cache sized to the batch (rollout.kv_cache_gb) instead of the shared share.
    if [ "$(left)" -gt 420 ]; then
      python3 -m bench.vs_trl --model $QWEN --device cuda --micro 16 --sides rlpost --results "$bg/RESULTS.md" \
        --rlpost-override rollout.engines_per_gpu=2 --rlpost-override rollout.kv_cache_gb=4
    fi
    echo "lease left $(left) s" ;;
  *) echo "usage: bash bench/gpu_lease.sh kit-bg|model-bg|quick|rollout|learn|study|wait|bench|trl (see the header)" >&2
     exit 2 ;;
esac
