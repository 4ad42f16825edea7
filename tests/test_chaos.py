"""Chaos suite (issue 17 item 8): faults injected into real debug runs (local Ray, DeepSpeed on CPU, the HF engine,
the tiny model, real reward worker processes), each ending the run in bounded time with one line and the
checkpoints intact. Nothing is mocked.

Fault -> expected outcome -> where it is tested:

- SIGKILL a learner rank or a reward actor mid-run -> one line naming it, its node and the last checkpoint,
  within 60 s; that checkpoint intact and finite -> here
- SIGKILL a rollout engine mid-generate, then SIGSTOP its replacement (a hang) -> each restarted in its place with
  the current weights and its prompts re-issued, the run finishes every step, `rollout/restarts` counts both;
  past `rollout.max_restarts` -> the one-line death -> here
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
    """The run's `rlpost: error:` lines, after checking that nothing printed a traceback (the reward pool shares
    no semaphore with its workers, so Ray's teardown of the reward actor leaves no resource-tracker tracebacks)."""
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


def the_engine(driver: subprocess.Popen) -> psutil.Process:
    """The run's one rollout engine process (a restarted engine is a new one)."""
    cluster = psutil.Process(driver.pid).children(recursive=True)
    engines = [p for p in cluster if "ray::HFEngine" in " ".join(p.cmdline())]
    assert len(engines) == 1, engines
    return engines[0]


def wait_until_generating(driver: subprocess.Popen, log: Path, timeout_s: float = 120) -> psutil.Process:
    """The engine process once it is busy: with 128 new tokens the engine computes ~1.6 s per step generating and
    ~0.02 s receiving weights, and is idle otherwise, so a busy engine is generating."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(psutil.NoSuchProcess, AssertionError):  # between a death and its replacement
            engine = the_engine(driver)
            before = sum(engine.cpu_times()[:2])
            time.sleep(0.2)
            if sum(engine.cpu_times()[:2]) - before > 0.1:
                return engine
    raise AssertionError(f"the engine never got busy: {log.read_text()[-3000:]}")


def wait_for_line(driver: subprocess.Popen, log: Path, text: str, count: int = 1, timeout_s: float = 120) -> None:
    """Until `text` is in the log `count` times."""
    deadline = time.monotonic() + timeout_s
    while log.read_text().count(text) < count:
        assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


# learner.lr high enough that a replacement engine left with the initial weights would sample visibly different
# logprobs from the learner's (rollout/logprob_diff).
ENGINE_RUN = ("trainer.steps=6", "rollout.max_new_tokens=128", "rollout.timeout_s=15", "learner.lr=1e-2")


def test_killed_and_hung_engines_are_restarted_and_the_run_finishes(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    with driver_process(start_run(run_dir, log, *ENGINE_RUN, model=tiny_model_dir)) as driver:
        wait_for_checkpoint(driver, run_dir, log)
        wait_until_generating(driver, log).kill()
        wait_for_line(driver, log, "restarting it (1 of rollout.max_restarts=2)")
        # The replacement is busy loading the model first: a step finished by it means it is up.
        wait_for_line(driver, log, "[rlpost] step ", count=log.read_text().count("[rlpost] step ") + 1)
        hung = wait_until_generating(driver, log)
        hung.send_signal(signal.SIGSTOP)  # alive, holding its generation: only rollout.timeout_s finds it
        t0 = time.monotonic()
        wait_for_line(driver, log, "restarting it (2 of rollout.max_restarts=2)")
        took = time.monotonic() - t0
        assert not psutil.wait_procs([hung], timeout=15)[1]  # killed, not left stopped
        assert driver.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert not error_lines(log)
    text = log.read_text()
    assert "rollout engine 0 (node 127.0.0.1) died (" in text, text[-3000:]
    assert "rollout engine 0 hung: no generation finished within rollout.timeout_s=15s" in text, text[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    restarts = [r["rollout/restarts"] for r in rows]
    assert restarts == sorted(restarts) and restarts[0] == 0 and restarts[-1] == 2, restarts
    # Every step trained on full batches, those after a restart generated by the replacement with the learner's
    # weights: engine and learner logprobs agree as they do before any restart.
    assert all(r["response/length_mean"] > 0 and math.isfinite(r["actor/pg_loss"]) for r in rows), rows[-1]
    assert all(r["rollout/logprob_diff"] < 1e-4 for r in rows), [r["rollout/logprob_diff"] for r in rows]
    assert_intact_and_finite(ckpt.CheckpointManager(str(run_dir), keep=2).complete()[0])
    print(f"\nthe hung engine was replaced {took:.1f}s after the SIGSTOP (rollout.timeout_s=15)")


def test_an_engine_death_past_max_restarts_ends_the_run_with_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    with driver_process(start_run(run_dir, log, *ENGINE_RUN, "rollout.max_restarts=0", model=tiny_model_dir)) as driver:
        wait_for_checkpoint(driver, run_dir, log)
        wait_until_generating(driver, log).kill()
        assert driver.wait(timeout=60) == 1, log.read_text()[-3000:]
    errors = error_lines(log)
    assert len(errors) == 1, errors
    assert errors[0].startswith("rlpost: error: rollout engine 0 (node 127.0.0.1) died ("), errors
    assert "; no restart left (rollout.max_restarts=0); the last checkpoint is " in errors[0], errors


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
