"""Numerical guards of a real learner rank (DeepSpeed on CPU, one rank, the tiny model): an update whose loss or
gradient norm is not finite is skipped and counted, the weights stay as they were, and `learner.max_skipped_updates`
skipped updates in a row stop the run with one line. Each ZeRO stage in its own process (the rank's process group
is per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import math, socket, sys
sys.path.insert(0, {root!r})
from omegaconf import OmegaConf
from rlpost.config import RunError
from rlpost.learner.actor import LearnerRank, MiniBatch, TrainItem
from rlpost.train import compose_config

cfg = compose_config(["cluster=debug_cpu", "model.path={model}", "learner.zero_stage={stage}", "learner.num_ranks=1",
                      "learner.micro_batch_size=2", "trainer.prompts_per_step=2", "algo=grpo", "algo.group_size=1",
                      "algo.num_minibatches=1", "algo.epochs=1", "algo.kl_coef=0", "learner.lr=1e-2",
                      "learner.max_skipped_updates=2"])
rank = LearnerRank(OmegaConf.to_container(cfg, resolve=True), 0, 1, {model!r}, 10)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
rank.setup("127.0.0.1", port)

def batch(advantage):
    items = [TrainItem([5, 6, 7], [8, 9], [-1.0, -1.0], [advantage, advantage]) for _ in range(2)]
    return [MiniBatch(items, global_tokens=4, global_seqs=2)]

def step(advantage):
    before = rank.weights_digest()
    metrics = rank.train_step(batch(advantage))
    print("step", advantage, metrics["actor/skipped_updates"], rank.weights_digest() != before,
          math.isfinite(metrics["actor/grad_norm"]))

step(1.0)           # trains: weights move
step(float("nan"))  # skipped: weights stay
step(1.0)           # a good update resets the count
step(float("inf"))
try:
    step(float("nan"))
except RunError as err:
    print("stopped:", err)
"""


@pytest.mark.slow  # DeepSpeed ranks
@pytest.mark.parametrize("stage", [0, 2])
def test_nonfinite_updates_are_skipped_counted_and_stop_the_run(tiny_model_dir: str, stage: int) -> None:
    script = SCRIPT.format(root=str(ROOT), model=tiny_model_dir, stage=stage)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("step", "stopped"))]
    assert lines == ["step 1.0 0.0 True True", "step nan 1.0 False False", "step 1.0 0.0 True True",
                     "step inf 1.0 False False",
                     "stopped: actor: 2 updates in a row had a non-finite loss or gradient norm and were skipped "
                     "(learner.max_skipped_updates=2); the run diverged: lower learner.lr or check the rewards, and "
                     "resume from the last checkpoint"], out.stdout[-3000:] + out.stderr[-2000:]
