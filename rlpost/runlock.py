"""One run per run folder: `<run_dir>/run.lock` names the run that owns the folder (PID, host, start time).

A second run in the same `trainer.run_dir` would interleave `metrics.jsonl` and overwrite the other's
checkpoints, so it is refused with one line naming the holder. A lock whose holder is dead (a run that was
SIGKILLed leaves its lock behind) is taken over with a warning; that is decided by the PID and its start time on
this host. A holder on another host (a run folder on shared storage) cannot be checked from here, so its lock is
only ever removed by hand. Two runs starting at the same moment decide under an flock held only while they look.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from rlpost.config import ConfigError

LOCK = "run.lock"


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_started": psutil.Process().create_time(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """Whether the lock's holder still runs: None if it is on another host (cannot tell from here). A PID that
    now belongs to another process (started at another time) counts as dead."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        return abs(psutil.Process(int(holder["pid"])).create_time() - float(holder["pid_started"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # a lock cut short by a crash while being written: nobody holds it
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def run_lock(run_dir: str, warn: Callable[[str], None] = print) -> Iterator[Path]:
    """Own `run_dir` for the duration of the block; ConfigError (one line) if another live run owns it."""
    path = Path(run_dir) / LOCK
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # on the folder, held only while deciding: the run's children never own it
        holder = _read(path)
        if holder is not None:
            alive = holder_alive(holder)
            who = f"run PID {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"
            if alive:
                raise ConfigError(f"trainer.run_dir={run_dir} is in use by {who}; wait for it to finish or stop "
                                  "it, or use another trainer.run_dir")
            if alive is None:
                raise ConfigError(f"trainer.run_dir={run_dir} is in use by {who}, another machine; if that run is "
                                  f"gone, delete {path}, or use another trainer.run_dir")
            warn(f"[rlpost] warning: taking over {path} from {who}, which is no longer running")
        me = _me()
        tmp = path.with_name(f".{LOCK}.{os.getpid()}")
        tmp.write_text(json.dumps(me))
        tmp.replace(path)  # atomic: a reader sees the old holder or the new one, never half a file
    finally:
        os.close(folder)  # releases the flock
    try:
        yield path
    finally:
        if _read(path) == me:  # still ours (not taken over by hand): release it
            path.unlink(missing_ok=True)
