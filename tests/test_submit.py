"""`rlpost-submit` and joining clusters: argument handling and unreachable addresses (fast), and a real
`ray job submit` of the debug experiment to a head started with `ray start --head` on loopback (integration).

The head runs as `ray start --head --block` in its own process group, and the test ends exactly that group:
`ray stop` would also stop every other Ray instance on the machine (other test sessions included).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

from rlpost.cluster.ray_cluster import actor_env, init_ray
from rlpost.config import ConfigError
from rlpost.submit import SubmitError, build_job, main

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_job_gets_an_absolute_run_dir_and_the_shipped_package(tmp_path: Path) -> None:
    entry, env, run_dir = build_job(str(ROOT), ["experiment=gsm8k_grpo_debug", "trainer.steps=2"], "python",
                                    ["WANDB_MODE=offline"], "/home/me/rlpost", "20260101-120000")
    assert run_dir == "/home/me/rlpost/runs/gsm8k_grpo_debug-20260101-120000"
    assert entry == ("python -m rlpost.train experiment=gsm8k_grpo_debug trainer.steps=2 "
                     "trainer.run_dir=/home/me/rlpost/runs/gsm8k_grpo_debug-20260101-120000")
    assert env["working_dir"] == str(ROOT) and ".venv" in env["excludes"] and "runs" in env["excludes"]
    assert env["env_vars"]["WANDB_MODE"] == "offline"
    _, _, run_dir = build_job(str(ROOT), ["trainer.run_dir=out/x y"], "python", [], "/base", "now")
    assert run_dir == "/base/out/x y"
    with pytest.raises(SubmitError, match="is not an rlpost checkout"):
        build_job(str(tmp_path), [], "python", [], "/base", "now")
    with pytest.raises(SubmitError, match="expected KEY=VALUE"):
        build_job(str(ROOT), [], "python", ["NOVALUE"], "/base", "now")


def test_environment_settings_reach_the_job_and_every_actor(monkeypatch) -> None:
    """The NVLink-multicast switches (and the offline/cache settings) set where the user submits or runs the
    driver travel to the job's driver and to every actor; unrelated variables do not."""
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RLPOST_UNRELATED", "x")
    _, env, _ = build_job(str(ROOT), [], "python", [], "/base", "now")
    assert env["env_vars"]["NCCL_NVLS_ENABLE"] == "0" and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "RLPOST_UNRELATED" not in env["env_vars"]
    cpu, gpu = actor_env("cpu"), actor_env("cuda")
    assert cpu["NCCL_NVLS_ENABLE"] == gpu["NCCL_NVLS_ENABLE"] == "0" and "RLPOST_UNRELATED" not in gpu
    assert cpu["DS_ACCELERATOR"] == "cpu" and "DS_ACCELERATOR" not in gpu
    assert cpu["OMP_NUM_THREADS"] == "1"


def test_unreachable_addresses_are_one_line(capsys) -> None:
    closed = free_port()  # nothing listens once the probe socket is closed
    t0 = time.monotonic()
    assert main(["--address", f"http://127.0.0.1:{closed}", "--working-dir", str(ROOT), "experiment=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rlpost-submit: error: --address http://127.0.0.1:{closed}: no Ray dashboard answers")
    assert "\n" not in err
    with pytest.raises(ConfigError, match=f"cluster.address='127.0.0.1:{closed}': no Ray cluster answers there"):
        init_ray(f"127.0.0.1:{closed}", 1)
    with pytest.raises(ConfigError, match="is not a Ray cluster address"):
        init_ray("http://127.0.0.1:8265", 1)
    assert time.monotonic() - t0 < 30  # ray.init alone would retry for minutes


@pytest.fixture
def ray_head(tmp_path: Path):
    """A real head on loopback with its own ports and temp dir; yields (dashboard URL, temp dir)."""
    ports = [free_port() for _ in range(7)]
    temp_dir = f"/tmp/rlpost-ray-{os.getpid()}-{ports[0]}"  # short: Ray's socket paths must fit 107 bytes
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: a single-machine head, which keeps --node-ip-address=127.0.0.1
    # (otherwise Ray swaps in the machine's external address and the head listens beyond loopback).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("PYTHONPATH", None)  # the job must import rlpost from its uploaded working dir, nowhere else
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ports[0]}",
         f"--dashboard-port={ports[1]}", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={ports[2]}",
         f"--dashboard-agent-listen-port={ports[3]}", f"--dashboard-agent-grpc-port={ports[4]}",
         f"--runtime-env-agent-port={ports[5]}", f"--metrics-export-port={ports[6]}", f"--temp-dir={temp_dir}",
         "--num-cpus=3", "--include-dashboard=true", "--disable-usage-stats"],
        env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{ports[1]}", temp_dir
    finally:
        head.terminate()  # `ray start --block` drains and stops the processes it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of this head's group is left
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.integration
def test_ray_job_submit_end_to_end(ray_head, tiny_model_dir: str, tmp_path: Path) -> None:
    address, temp_dir = ray_head
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "rlpost.submit", "--address", address, "--working-dir", str(ROOT),
           "--python", sys.executable, "--env", "OMP_NUM_THREADS=1", "--",
           "experiment=gsm8k_grpo_debug", f"model.path={tiny_model_dir}", f"trainer.run_dir={run_dir}",
           "trainer.steps=2", "trainer.prompts_per_step=2", "algo.group_size=4", "rollout.max_new_tokens=16",
           "rollout.num_engines=1", "learner.num_ranks=1", "learner.micro_batch_size=4", "reward.num_actors=1",
           "reward.num_workers=1", "data.limit=64", "eval.limit=2", "eval.num_samples=2", "eval.k=2",
           "logger.progress=false"]
    # The dashboard takes a few seconds to come up: the first submission may find nothing there yet.
    deadline = time.monotonic() + 120
    while True:
        t0 = time.monotonic()
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        if "no Ray dashboard answers" not in out.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    job_id = out.stdout.strip().splitlines()[-1]
    assert job_id.startswith("raysubmit_") and f"job {job_id} SUCCEEDED" in out.stdout
    assert "[rlpost] actors up" in out.stdout  # the job's log was streamed
    print(f"\nsubmitted job ran in {time.monotonic() - t0:.0f}s")

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval/pass@1" in rows[0] and "eval/pass@2" in rows[2]
    for name in ("report.md", "config.yaml", ".hydra/config.yaml", "hf_model/model.safetensors",
                 "checkpoints/step_000002/meta.json", "plots/reward.png"):
        assert (run_dir / name).exists(), name
    # Hydra wrote into the absolute run folder, not into Ray's throwaway copy of the working dir.
    copies = [p for p in Path(temp_dir).glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert copies, "the working dir was not uploaded"
    for copy in copies:
        assert (copy / "rlpost" / "submit.py").exists()
        assert not (copy / ".hydra").exists() and not (copy / "runs").exists() and not (copy / "outputs").exists()
