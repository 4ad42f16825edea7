"""Chaos suite (issue 17 item 8): faults injected into real debug runs (local Ray, DeepSpeed on CPU, the HF engine,
the tiny model, real reward worker processes), each ending the run in bounded time with one line and the
checkpoints intact. Nothing is mocked.

Fault -> expected outcome -> where it is tested:

- SIGKILL a learner rank or a reward actor mid-run -> one line naming it, its node and the last checkpoint,
  within 60 s; that checkpoint intact and finite -> here
- NaN reward storm (every item, from some step on) -> scored `error_score`, counted, then one line
  (`reward.max_failure_frac`); no NaN in the metrics or a checkpoint -> here
- non-finite loss or grad norm (divergence) -> update skipped and counted; `learner.max_skipped_updates` in a
  row stop the run with one line -> tests/test_numerical_guards.py
- a non-finite weight at save time -> save refused, the last finite checkpoint kept
  -> tests/test_checkpoint.py::test_a_refused_save_keeps_the_last_finite_checkpoint
- runaway reward (1e36, beyond `reward.max_abs_score`) -> an error scored `error_score`
  -> tests/test_rewards.py::test_runaway_scores_are_errors
- reward worker hangs, raises, crashes or is killed -> that item fails, the worker is replaced
  -> tests/test_rewards.py (test_pool_*)
- reward worker allocates 2 GB or prints 10 MiB -> item fails and worker replaced; output capped
  -> tests/test_reward_bounds.py
- SIGTERM to the driver -> step finished and checkpointed, one line, exit 143 -> tests/test_signals.py
- SIGKILL of the driver, then resume -> exact resume (metrics and weights) -> tests/test_resume.py
- truncated, altered or planted checkpoint; full disk -> skipped or refused with one line, never unpickled
  -> tests/test_checkpoint.py
- a second run in the same run folder -> refused with one line naming the holder -> tests/test_runlock.py
- a client from another address, another head on the machine -> nothing listens outside loopback, the head is
  not joined -> tests/test_closed_cluster.py

A NaN reward never turns into skipped updates: the reward manager scores a non-finite value `error_score` (and
`reward.max_failure_frac` stops the run), so the storm reaches the learner as finite advantages. The learner's
own guard (skipped updates, then a stop) is exercised directly by tests/test_numerical_guards.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from rlpost import checkpoint as ckpt

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parent.parent

STORM_PLUGIN = '''
import os

def storm(prompts, completions, switch, **_):
    """Length-based while `switch` does not exist; NaN for every item once the test creates it."""
    if os.path.exists(switch):
        return [float("nan")] * len(completions)
    return [len(c) / 100 for c in completions]
'''


def start_run(run_dir: Path, log: Path, *overrides: str, model: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug", f"model.path={model}",
         f"trainer.run_dir={run_dir}", "trainer.steps=200", "trainer.save_every=1", "trainer.prompts_per_step=2",
         "algo.group_size=2", "rollout.max_new_tokens=8", "rollout.num_engines=1", "learner.num_ranks=1",
         "data.limit=16", "reward.num_actors=1", "reward.num_workers=1", "eval.enabled=false",
         "trainer.export_hf=false", "logger.progress=false", "logger.wandb.mode=disabled", "cluster.num_cpus=3",
         *overrides],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_checkpoint(driver: subprocess.Popen, run_dir: Path, log: Path, timeout_s: float = 300) -> Path:
    """The first complete checkpoint of the run (save_every=1: step 1's)."""
    manager = ckpt.CheckpointManager(str(run_dir), keep=2)
    deadline = time.monotonic() + timeout_s
    while not manager.complete():
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return manager.complete()[0]


def error_lines(log: Path) -> list[str]:
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("rlpost: error:")]


def assert_intact_and_finite(path: Path) -> None:
    """Every file matches its SHA-256 and every floating tensor saved in it is finite."""
    ckpt.verify(path)
    tensors = 0
    for f in path.rglob("*.pt"):
        stack = [torch.load(f, map_location="cpu", weights_only=True)]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
            elif isinstance(x, torch.Tensor) and x.is_floating_point():
                tensors += 1
                assert torch.isfinite(x).all(), f"non-finite values in {f}"
    assert tensors > 0, sorted(p.name for p in path.rglob("*"))


@contextlib.contextmanager
def driver_process(driver: subprocess.Popen):
    try:
        yield driver
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


@pytest.mark.parametrize("actor_class, name", [("LearnerRank", "learner rank 0"), ("RewardWorker", "reward actor 0")])
def test_sigkilled_actor_ends_the_run_with_one_line(tiny_model_dir: str, tmp_path: Path, actor_class: str,
                                                    name: str) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    with driver_process(start_run(run_dir, log, model=tiny_model_dir)) as driver:
        wait_for_checkpoint(driver, run_dir, log)
        cluster = psutil.Process(driver.pid).children(recursive=True)
        victims = [p for p in cluster if f"ray::{actor_class}" in " ".join(p.cmdline())]
        assert len(victims) == 1, [" ".join(p.cmdline())[:80] for p in cluster]
        t0 = time.monotonic()
        victims[0].kill()
        assert driver.wait(timeout=60) == 1, log.read_text()[-3000:]
        took = time.monotonic() - t0
    errors = error_lines(log)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"rlpost: error: {name} (node 127.0.0.1) died ("), errors
    last = ckpt.CheckpointManager(str(run_dir), keep=2).complete()[0]
    assert errors[0].endswith(f"; the last checkpoint is {last} (trainer.resume=auto continues from it)"), errors
    assert_intact_and_finite(last)
    print(f"\nstopped {took:.1f}s after the SIGKILL: {errors[0]}")


def test_nan_reward_storm_stops_without_a_nan_checkpoint(tiny_model_dir: str, tmp_path: Path) -> None:
    plugin, switch = tmp_path / "storm.py", tmp_path / "storm_now"
    plugin.write_text(STORM_PLUGIN)
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    entry = f"reward.functions=[{{path: {plugin}, name: storm, switch: {switch}}}]"
    with driver_process(start_run(run_dir, log, entry, model=tiny_model_dir)) as driver:
        wait_for_checkpoint(driver, run_dir, log)
        switch.touch()
        # 2: RewardFailureError is a ConfigError (the reward function needs fixing), not a crash
        assert driver.wait(timeout=120) == 2, log.read_text()[-3000:]
    errors = error_lines(log)
    assert len(errors) == 1 and "reward.max_failure_frac" in errors[0], errors
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float)), rows[-1]
    for path in ckpt.CheckpointManager(str(run_dir), keep=2).complete():
        assert_intact_and_finite(path)
    failures = [json.loads(line) for line in (run_dir / "reward_failures.jsonl").read_text().splitlines()]
    assert failures and all("NaN" in f["error"] or "nan" in f["error"] for f in failures), failures[:2]
