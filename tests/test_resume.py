"""Exact resume after a hard kill, on CPU, all real (local Ray, DeepSpeed, HF engine, math-verify workers).

Run A trains 4 steps straight, in this process. Run B is `python -m rlpost.train` with the same config, SIGKILLed
as soon as its step-2 checkpoint is complete, then resumed with `trainer.resume=auto` for steps 3-4 (a newer,
truncated checkpoint planted in between must be skipped with a warning). Both export their final policy; the
weights must be bit-identical and every per-step metric other than timings exactly equal. The CPU path is
deterministic by construction: sampling is seeded per step, the data order is a function of the loader position,
the minibatch order of (seed, step), and one learner rank has no reduction order to vary.
B's report card (written by the resumed driver) must hold all four steps, plots and the eval numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from safetensors.torch import load_file

from rlpost.checkpoint import CheckpointError, sha256
from rlpost.digest import weights_digest
from rlpost.train import compose_config
from rlpost.trainer import Trainer
from rlpost.validate import validate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
TIMING = ("time/", "perf/", "learner/seconds", "sync/seconds", "sync/gb_per_s")  # wall-clock: differ run to run


def overrides(model_dir: str, run_dir: Path, *extra: str) -> list[str]:
    return ["experiment=gsm8k_grpo_debug", f"model.path={model_dir}", f"trainer.run_dir={run_dir}",
            "trainer.steps=4", "trainer.save_every=2", "trainer.keep_checkpoints=2", "trainer.prompts_per_step=2",
            "algo.group_size=4", "algo.kl_coef=0.05", "rollout.max_new_tokens=16", "rollout.num_engines=1",
            "learner.num_ranks=1", "learner.micro_batch_size=4", "learner.lr=1e-3", "data.limit=64",
            "reward.num_actors=1", "reward.num_workers=1", "eval.every=2", "eval.limit=2", "eval.num_samples=2",
            "eval.k=2", "logger.progress=false", "logger.wandb.mode=disabled", "cluster.address=local",
            "cluster.num_cpus=3",
            "reward.functions=[{path: rewards/gsm8k.py, name: score}, "
            f"{{path: {ROOT / 'tests' / 'rewards_for_tests.py'}, name: text_length}}]", *extra]


def driver(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "rlpost.train", *args], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_checkpoint(proc: subprocess.Popen, checkpoint: Path, timeout_s: float = 400) -> threading.Thread:
    """SIGKILL the driver the moment `checkpoint` is complete, then its local Ray processes (its group)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not (checkpoint / "meta.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):  # (gone already if it failed early; the test says why)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the local cluster this driver started, if anything is left

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def digest(model_dir: Path) -> str:
    return weights_digest(load_file(model_dir / "model.safetensors").items())


def test_resume_after_sigkill_is_exact(tiny_model_dir: str, tmp_path: Path) -> None:
    run_a, run_b = tmp_path / "straight", tmp_path / "killed"
    t0 = time.monotonic()
    killed = driver(overrides(tiny_model_dir, run_b), tmp_path / "killed.log")
    watcher = kill_after_checkpoint(killed, run_b / "checkpoints" / "step_000002")

    # Run A in this process (at the same time as B's first part), keeping its actors for the corrupt-state check.
    cfg = compose_config(overrides(tiny_model_dir, run_a))
    validate(cfg)
    run_a.mkdir()
    trainer = Trainer(cfg, tiny_model_dir, str(run_a))
    try:
        trainer.start()
        trainer.fit()
        # A checkpoint whose DeepSpeed state is garbage of the right size passes the size check but not its
        # SHA-256: refused before any file is unpickled.
        corrupt = tmp_path / "corrupt" / "checkpoints" / "step_000004"
        shutil.copytree(run_a / "checkpoints" / "step_000004", corrupt)
        states = corrupt / "policy" / "state" / "mp_rank_00_model_states.pt"
        states.write_bytes(os.urandom(states.stat().st_size))
        with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt does not match its SHA-256"):
            trainer.prepare_resume(corrupt)
        # With meta.json rewritten to match, it fails in the learner: one line naming the group, not a traceback.
        meta = json.loads((corrupt / "meta.json").read_text())
        meta["files"]["policy/state/mp_rank_00_model_states.pt"]["sha256"] = sha256(states)
        (corrupt / "meta.json").write_text(json.dumps(meta))
        trainer.prepare_resume(corrupt)
        with pytest.raises(CheckpointError, match="is corrupt: the policy group cannot load it") as err:
            trainer.restore()
        assert "\n" not in str(err.value)
    finally:
        trainer.close()
        ray.shutdown()
    t_a = time.monotonic() - t0

    watcher.join(timeout=600)
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (run_b / "hf_model").exists()  # it really died mid-run
    # A newer checkpoint that was damaged (truncated) must be skipped, not loaded.
    damaged = run_b / "checkpoints" / "step_000003"
    shutil.copytree(run_b / "checkpoints" / "step_000002", damaged)
    with open(damaged / "policy" / "state" / "mp_rank_00_model_states.pt", "r+b") as f:
        f.truncate(1000)

    resumed = driver(overrides(tiny_model_dir, run_b, "trainer.resume=auto"), tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    log = (tmp_path / "resumed.log").read_text()
    assert "step_000003 is incomplete: policy/state/mp_rank_00_model_states.pt is 1000 bytes" in log
    assert "; skipping it" in log
    assert f"resumed from {run_b / 'checkpoints' / 'step_000002'} at step 2" in log
    print(f"\nrun A (straight, in-process) {t_a:.0f}s; kill + resume total {time.monotonic() - t0:.0f}s")

    # Same final parameters, bit for bit, and the policy really moved.
    assert digest(run_a / "hf_model") == digest(run_b / "hf_model")
    assert digest(run_a / "hf_model") != digest(Path(tiny_model_dir))
    # Same per-step record: the eval at step 0, four training steps with evals at 2 and 4.
    a, b = rows(run_a), rows(run_b)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        keys = sorted(k for k in ra if not k.startswith(TIMING))
        assert keys == sorted(k for k in rb if not k.startswith(TIMING))
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}, ra["step"]
    # Greedy pass@1 at every evaluation; the sampled pass@k and maj@k at the first and the last.
    assert {"eval/pass@1", "eval/pass@2", "eval/maj@2"} <= set(a[0]) and {"eval/pass@2", "eval/maj@2"} <= set(a[4])
    assert "eval/pass@1" in a[2] and "eval/pass@2" not in a[2]
    assert a[4]["actor/kl"] > 0

    # Pruned to the newest two complete checkpoints; the damaged one is left alone for a person to inspect.
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["step_000002", "step_000003",
                                                                         "step_000004"]
    # The report card of the resumed run covers the whole run.
    report = (run_b / "report.md").read_text()
    assert "4 training steps logged" in report
    assert "| eval/pass@1 |" in report and "| eval/pass@2 |" in report
    for stem in ("reward", "kl", "response_length", "eval"):
        assert (run_b / "plots" / f"{stem}.png").stat().st_size > 0 and f"plots/{stem}.png" in report
    assert (run_b / "hf_model" / "tokenizer.json").exists() and (run_b / "hf_model" / "config.json").exists()
