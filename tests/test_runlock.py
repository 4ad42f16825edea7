"""One run per run folder: a second `rlpost-train` in a held folder is refused with one line naming the holder,
a dead holder's lock is taken over with a warning, a holder on another host is never overruled."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlpost.config import ConfigError
from rlpost.runlock import LOCK, run_lock

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from rlpost.runlock import run_lock
with run_lock({run_dir!r}):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_run_in_a_held_folder_is_refused(tiny_model_dir: str, tmp_path: Path) -> None:
    """A real `python -m rlpost.train` against a folder another process holds: exit 2 and one line, before any
    actor starts, and the holder's lock stays."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), run_dir=str(run_dir))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug",
                              f"model.path={tiny_model_dir}", f"trainer.run_dir={run_dir}", "logger.progress=false",
                              "logger.wandb.mode=disabled"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        errors = [line for line in out.stderr.splitlines() if line.startswith("rlpost: error:")]
        assert out.returncode == 2, out.stderr[-3000:]
        assert errors == [f"rlpost: error: trainer.run_dir={run_dir} is in use by run PID {holder.pid} on host "
                          f"{socket.gethostname()} (since {json.loads((run_dir / LOCK).read_text())['since']}); "
                          "wait for it to finish or stop it, or use another trainer.run_dir"], out.stderr[-3000:]
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists()
        assert "Started a local Ray instance" not in out.stdout + out.stderr
        assert json.loads((run_dir / LOCK).read_text())["pid"] == holder.pid
        print(f"\nrefused in {time.monotonic() - t0:.1f}s")
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), run_dir=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "held"
    dead.kill()  # SIGKILL: no clean-up, the lock stays behind
    dead.wait()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == dead.pid
    warnings: list[str] = []
    with run_lock(str(tmp_path), warn=warnings.append) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"taking over {tmp_path / LOCK} from run PID {dead.pid} on host" in warnings[0]
    assert "no longer running" in warnings[0]
    assert not (tmp_path / LOCK).exists()  # released at the end of the run


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    """The holder's PID now belongs to another process (this one, started at another time): stale."""
    me = psutil.Process()
    (tmp_path / LOCK).write_text(json.dumps({"pid": me.pid, "host": socket.gethostname(),
                                             "pid_started": me.create_time() - 100, "since": "earlier"}))
    warnings: list[str] = []
    with run_lock(str(tmp_path), warn=warnings.append):
        pass
    assert len(warnings) == 1


def test_a_holder_on_another_host_is_never_overruled(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1234, "host": "node-elsewhere", "pid_started": 0.0,
                                             "since": "2026-01-01 00:00:00"}))
    with pytest.raises(ConfigError, match="in use by run PID 1234 on host node-elsewhere .*another machine; if "
                                          "that run is gone, delete") as err, run_lock(str(tmp_path)):
        pass
    assert "\n" not in str(err.value)
    assert json.loads((tmp_path / LOCK).read_text())["host"] == "node-elsewhere"
