"""Checkpoint folders without Ray: atomic save, keep-K, damaged folders skipped, fingerprint refusal, a corrupt
driver state, and a real write failure (the file-size limit, as a full disk would) leaving the previous
checkpoint intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlpost.checkpoint import (
    DRIVER,
    CheckpointError,
    CheckpointManager,
    check_compatible,
    find_resume,
    load_driver_state,
    verify,
)

ROOT = Path(__file__).resolve().parent.parent


def writer(payload: bytes):
    """A checkpoint body like the trainer's: a group folder with a state file, and the driver state."""

    def write(folder: Path) -> None:
        (folder / "policy").mkdir()
        (folder / "policy" / "state.bin").write_bytes(payload)
        torch.save({"step": len(payload), "loader": {}, "rng": {}, "metrics": []}, folder / DRIVER)

    return write


def test_save_is_complete_and_keeps_the_newest(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        manager.save(step, writer(bytes([step]) * 100), {"fingerprint": {}, "groups": ["policy"]})
    assert [p.name for p in manager.step_dirs()] == ["step_000003", "step_000002"]
    meta = verify(manager.latest())
    assert meta["step"] == 3 and meta["files"] == {"driver.pt": os.path.getsize(manager.latest() / DRIVER),
                                                   "policy/state.bin": 100}
    assert not list(manager.root.glob(".tmp-*"))  # no temp folder left behind


def test_truncated_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=3)
    for step in (1, 2):
        manager.save(step, writer(b"x" * 1000), {})
    newest = manager.root / "step_000002" / "policy" / "state.bin"
    with open(newest, "r+b") as f:
        f.truncate(400)
    warnings: list[str] = []
    assert manager.latest(warn=warnings.append).name == "step_000001"
    assert len(warnings) == 1 and "step_000002 is incomplete: policy/state.bin is 400 bytes, expected 1000" in \
        warnings[0]
    # A folder whose save never reached meta.json (renamed by hand, or copied half-way) is skipped too.
    (manager.root / "step_000003").mkdir()
    assert find_resume("auto", str(tmp_path)).name == "step_000001"
    # Named explicitly, a damaged checkpoint is an error (one line), not a silent fallback.
    with pytest.raises(CheckpointError, match="incomplete: policy/state.bin is 400 bytes") as err:
        find_resume(str(manager.root / "step_000002"), str(tmp_path))
    assert "\n" not in str(err.value)
    # Damaged folders do not count towards keep: the complete ones stay.
    manager.keep = 1
    manager.save(4, writer(b"y" * 10), {})
    assert sorted(p.name for p in manager.step_dirs()) == ["step_000002", "step_000003", "step_000004"]


def test_interrupted_save_leaves_nothing_loadable(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=2)
    manager.save(1, writer(b"a" * 10), {})

    def dies_half_way(folder: Path) -> None:
        (folder / "policy").mkdir()
        (folder / "policy" / "state.bin").write_bytes(b"half")
        raise RuntimeError("learner rank 0 died")

    with pytest.raises(CheckpointError, match="step 2 could not be written .*RuntimeError: learner rank 0 died.*"
                                              "previous checkpoint step_000001 is intact"):
        manager.save(2, dies_half_way, {})
    assert [p.name for p in manager.root.iterdir()] == ["step_000001"]
    assert find_resume("auto", str(tmp_path)).name == "step_000001"


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A real failing write: the process's file-size limit makes write() fail with EFBIG, as ENOSPC would."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from rlpost.checkpoint import CheckpointError, CheckpointManager
from tests.test_checkpoint import writer
manager = CheckpointManager({str(tmp_path)!r}, keep=2)
manager.save(1, writer(b"a" * 1000), {{}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with an error instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    manager.save(2, writer(b"b" * 1_000_000), {{}})
except CheckpointError as err:
    print(str(err).replace("\\n", " NEWLINE "))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]  # the line before it is the first save's progress note
    assert "NEWLINE" not in line and "checkpoint step 2 could not be written" in line and "File too large" in line
    assert "the previous checkpoint step_000001 is intact" in line
    manager = CheckpointManager(str(tmp_path), keep=2)
    assert [p.name for p in manager.root.iterdir()] == ["step_000001"]
    assert verify(manager.latest())["step"] == 1
    assert (manager.latest() / "policy" / "state.bin").read_bytes() == b"a" * 1000


def test_incompatible_config_is_refused_with_one_line(tmp_path: Path) -> None:
    saved = {"model.path": "/models/a", "algo.name": "grpo", "learner.num_ranks": 2}
    check_compatible(tmp_path, saved, dict(saved))
    with pytest.raises(CheckpointError) as err:
        check_compatible(tmp_path, saved, {**saved, "model.path": "/models/b", "algo.name": "ppo"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "model.path was '/models/a', now '/models/b'" in msg and "algo.name was 'grpo', now 'ppo'" in msg
    assert "trainer.resume=null" in msg


def test_corrupt_driver_state_is_one_line(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=2)
    path = manager.save(1, writer(b"a" * 10), {})
    driver = path / DRIVER
    driver.write_bytes(os.urandom(driver.stat().st_size))  # same size: only reading it can tell
    verify(path)
    with pytest.raises(CheckpointError, match=r"checkpoint .*step_000001 is corrupt: driver.pt cannot be read") as e:
        load_driver_state(path)
    assert "\n" not in str(e.value)


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    """After resuming from an older checkpoint, the run passes the newer steps' numbers again."""
    manager = CheckpointManager(str(tmp_path), keep=3)
    for step in (2, 4):
        manager.save(step, writer(b"old" * 10), {})
    manager.save(4, writer(b"new" * 5), {})
    assert [p.name for p in manager.complete()] == ["step_000004", "step_000002"]
    assert (manager.latest() / "policy" / "state.bin").read_bytes() == b"new" * 5
    assert sorted(p.name for p in manager.root.iterdir()) == ["step_000002", "step_000004"]


def test_find_resume_accepts_run_and_checkpoint_folders(tmp_path: Path) -> None:
    assert find_resume(None, str(tmp_path)) is None
    with pytest.raises(CheckpointError, match="does not exist"):
        find_resume(str(tmp_path / "nope"), str(tmp_path))
    assert find_resume("auto", str(tmp_path)) is None  # nothing yet: start fresh
    with pytest.raises(CheckpointError, match="no complete checkpoint there"):
        find_resume(str(tmp_path), str(tmp_path))
    manager = CheckpointManager(str(tmp_path), keep=2)
    manager.save(5, writer(b"a"), {})
    for given in (tmp_path, manager.root, manager.root / "step_000005"):
        assert find_resume(str(given), "/elsewhere").name == "step_000005"
