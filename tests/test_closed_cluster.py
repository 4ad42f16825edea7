"""A debug run's cluster is closed: every socket its processes listen on is on loopback, and the default
`cluster.address=""` starts a private cluster instead of joining a `ray start` head found on the machine.

All real: a `ray start` head in its own temp dir (the place Ray's discovery looks, via RAY_TMPDIR), then the
debug experiment's driver set-up (`Trainer.start`: rlpost's `init_ray`, reward workers, an HF engine, two
DeepSpeed ranks with their TCPStore rendezvous, the gloo sync group) and one training step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray

from rlpost.sync.store import free_port, is_loopback
from rlpost.train import compose_config
from rlpost.trainer import Trainer
from rlpost.validate import validate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def listeners(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of `processes`."""
    found = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            name = proc.name()
            found += [(name, c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
    return found


@pytest.fixture
def other_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A `ray start` head on loopback, discoverable the way Ray discovers one (its address file in the temp dir
    that this process's Ray also looks in); yields (its GCS address, its processes)."""
    ray_tmp = Path(f"/tmp/rlpost-cc-{os.getpid()}")  # short: Ray's socket paths must fit 107 bytes
    ray_tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    gcs = f"127.0.0.1:{free_port('127.0.0.1')}"
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: a single-machine head, on loopback (launch/README.md)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs.split(':')[1]}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats"],
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    address_file = ray_tmp / "ray" / "ray_current_cluster"
    deadline = time.monotonic() + 120
    while not address_file.exists() and head.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        assert address_file.exists(), (tmp_path / "head.log").read_text()[-2000:]
        assert address_file.read_text().strip() == gcs
        yield gcs, [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def test_debug_run_is_private_and_listens_on_loopback_only(other_head, tiny_model_dir: str, tmp_path: Path) -> None:
    head_gcs, head_processes = other_head
    cfg = compose_config(["experiment=gsm8k_grpo_debug", f"model.path={tiny_model_dir}",
                          f"trainer.run_dir={tmp_path / 'run'}", "trainer.steps=1", "trainer.prompts_per_step=2",
                          "algo.group_size=2", "rollout.max_new_tokens=8", "rollout.num_engines=1",
                          "learner.num_ranks=2", "learner.micro_batch_size=2", "data.limit=16",
                          "reward.num_actors=1", "reward.num_workers=1", "eval.enabled=false",
                          "trainer.export_hf=false", "logger.progress=false", "logger.wandb.mode=disabled",
                          "cluster.num_cpus=4"])
    assert cfg.cluster.address == ""  # the default
    validate(cfg)
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tiny_model_dir, str(tmp_path / "run"))
    try:
        trainer.start()
        trainer.fit()  # generation, rewards, two-rank training, weight sync, a checkpoint
        # A private cluster, not the head that `ray start` left on this machine.
        assert ray.get_runtime_context().gcs_address != head_gcs
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        others = {p.pid for p in head_processes}
        run = [p for p in [psutil.Process(), *psutil.Process().children(recursive=True)] if p.pid not in others]
        found = listeners(run)
        names = {name for name, _, _ in found}
        # The driver, GCS, raylet, agents and every actor (learner ranks host the TCPStores) listen somewhere.
        assert {"gcs_server", "raylet"} <= names and any("LearnerRank" in n for n in names), found
        outside = [entry for entry in found if not is_loopback(entry[1])]
        assert not outside, f"listening outside loopback: {outside}"
        print(f"\n{len(found)} listening sockets of {len(run)} processes, all on loopback")
    finally:
        trainer.close()
        ray.shutdown()
