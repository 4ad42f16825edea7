"""SIGTERM (what Ray jobs, Slurm and Kubernetes send) to a real debug run's driver: it finishes the step in flight,
checkpoints it, then unwinds like an error, with one line, the report of the steps so far, the run folder
released, exit 143, and no process of its local cluster left behind. Before: the driver aborted (134) with no
message, no report and no checkpoint, and left agents running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_stops_the_run_cleanly(tiny_model_dir: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug", f"model.path={tiny_model_dir}",
         f"trainer.run_dir={run_dir}", "trainer.steps=200", "trainer.prompts_per_step=2", "algo.group_size=2",
         "rollout.max_new_tokens=8", "rollout.num_engines=1", "learner.num_ranks=1", "data.limit=16",
         "reward.num_actors=1", "reward.num_workers=1", "eval.enabled=false", "logger.progress=false",
         "logger.wandb.mode=disabled", "cluster.num_cpus=3"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 400
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and driver.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert driver.poll() is None, log.read_text()[-3000:]
        cluster = psutil.Process(driver.pid).children(recursive=True)
        assert len(cluster) > 3  # GCS, raylet, agents, actors
        t0 = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) == 143, log.read_text()[-3000:]
        took = time.monotonic() - t0
        errors = [line for line in log.read_text().splitlines() if line.startswith("rlpost: error:")]
        assert errors == [f"rlpost: error: stopped by SIGTERM (the report and the checkpoints so far are in {run_dir}"
                          "; trainer.resume=auto continues)"], log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps and "training steps logged" in (run_dir / "report.md").read_text()
        # The step the signal interrupted finished and was checkpointed: resume loses nothing.
        assert (run_dir / "checkpoints" / f"step_{steps[-1]:06d}" / "meta.json").is_file()
        assert "SIGTERM: stopping after the current step" in log.read_text()
        assert not (run_dir / "run.lock").exists()
        time.sleep(5)  # Ray's processes exit as the driver shuts the cluster down
        left = [p for p in cluster if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(p.pid, p.name()) for p in left]
        print(f"\nstopped {took:.1f}s after SIGTERM, at step {steps[-1]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
