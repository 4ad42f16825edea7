"""Checkpoint folders without Ray: atomic save, keep-K, damaged folders skipped, fingerprint refusal, a corrupt
driver state, a real write failure (the file-size limit, as a full disk would) leaving the previous checkpoint
intact; SHA-256 verification, weights-only loading, and planted pickles that never run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlpost.checkpoint import (
    DRIVER,
    META,
    CheckpointError,
    CheckpointManager,
    check_compatible,
    check_intact,
    export_final,
    file_records,
    find_resume,
    load_driver_state,
    rng_state,
    set_rng_state,
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
    assert meta["step"] == 3 and meta["files"] == {
        "driver.pt": {"size": os.path.getsize(manager.latest() / DRIVER),
                      "sha256": hashlib.sha256((manager.latest() / DRIVER).read_bytes()).hexdigest()},
        "policy/state.bin": {"size": 100, "sha256": hashlib.sha256(bytes([3]) * 100).hexdigest()}}
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
    driver.write_bytes(os.urandom(driver.stat().st_size))  # same size: only its hash or reading it can tell
    verify(path, hashes=False)
    with pytest.raises(CheckpointError, match="altered or damaged: driver.pt does not match its SHA-256"):
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


class Payload:
    """Unpickling this runs code: it writes `marker` (what an attacker's checkpoint would do, less harmfully)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def plant(path: Path, marker: Path, rehash: bool) -> None:
    """Replace the checkpoint's driver.pt by one that runs code when unpickled; `rehash`: also rewrite meta.json
    to match, as someone who can write the folder could."""
    torch.save({"step": 1, "loader": {}, "rng": {}, "metrics": [], "x": Payload(marker)}, path / DRIVER)
    if rehash:
        meta = json.loads((path / META).read_text())
        meta["files"] = {name: record for name, record in file_records(path).items() if name != META}
        (path / META).write_text(json.dumps(meta))


def test_planted_driver_state_never_runs(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=2)
    path = manager.save(1, writer(b"a" * 10), {})
    marker = tmp_path / "payload-ran"
    # Planted with a matching meta.json: the hashes pass, the weights-only load refuses it.
    plant(path, marker, rehash=True)
    check_intact(path)
    with pytest.raises(CheckpointError, match="step_000001 is refused: driver.pt holds objects other than plain "
                                              "data and tensors") as err:
        load_driver_state(path)
    assert "\n" not in str(err.value) and not marker.exists()
    # Planted alone: refused by its hash before anything reads it.
    path = manager.save(2, writer(b"a" * 10), {})
    plant(path, marker, rehash=False)
    with pytest.raises(CheckpointError, match="step_000002 is incomplete: driver.pt is \\d+ bytes") as err:
        check_intact(path)
    assert "\n" not in str(err.value) and "trainer.resume=auto" in str(err.value)
    assert not marker.exists()
    # The test can fail: a full unpickle of that file does run the payload.
    torch.load(path / DRIVER, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_files_not_in_meta_are_refused(tmp_path: Path) -> None:
    path = CheckpointManager(str(tmp_path), keep=2).save(1, writer(b"a" * 10), {})
    (path / "policy" / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="altered: policy/extra.pt is not recorded in meta.json"):
        verify(path)


def test_auto_resume_takes_the_newest_intact_and_never_starts_over_damaged_ones(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=3)
    for step in (1, 2):
        manager.save(step, writer(b"a" * 10), {})
    state = manager.root / "step_000002" / "policy" / "state.bin"
    state.write_bytes(b"b" * 10)  # same size, other bytes
    warnings: list[str] = []
    assert manager.latest(warn=warnings.append).name == "step_000001"
    assert len(warnings) == 1 and "step_000002 is altered or damaged: policy/state.bin" in warnings[0]
    (manager.root / "step_000001" / DRIVER).unlink()
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoint\(s\) in .* is intact \(step_000002, "
                                              r"step_000001;") as err:
        find_resume("auto", str(tmp_path))
    assert "\n" not in str(err.value) and "another trainer.run_dir" in str(err.value)


def test_rng_state_is_plain_and_round_trips_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


DEEPSPEED_SCRIPT = """
import os, socket, sys
sys.path.insert(0, {root!r})
os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    os.environ["MASTER_PORT"] = str(s.getsockname()[1])
import shutil
from pathlib import Path
import torch, deepspeed
from rlpost.learner.checkpointing import CheckpointMixin
from rlpost.learner.ds_config import build_ds_config
from tests.test_checkpoint import Payload

deepspeed.init_distributed(dist_backend="gloo")
class Rank(CheckpointMixin):
    rank = 0
rank = Rank()
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
rank.engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=build_ds_config({stage}, 1, 1, 1, 1.0,
                                                                                        "float32"))
rank._params, rank.device = dict(rank.engine.module.named_parameters()), torch.device("cpu")
rank.engine.backward(rank.engine(torch.randn(1, 8)).sum())
rank.engine.step()
folder, marker = Path({folder!r}), Path({marker!r})
rank.save_checkpoint(str(folder))
rank.load_checkpoint(str(folder))  # DeepSpeed's own files load weights-only (its optimizer classes allowed)
print("round trip ok")
for name in {targets!r}:
    target = folder / name
    saved = target.read_bytes()
    torch.save({{"module": Payload(marker)}}, target)
    try:
        rank.load_checkpoint(str(folder))
        print("LOADED", name)
    except Exception as err:
        print("refused", name, type(err).__name__)
    target.write_bytes(saved)
if {stage} == 0:  # without ZeRO the module's parameters are the optimizer's: NaN in them is the state on disk
    finite = {{n: p.detach().clone() for n, p in rank._params.items()}}
    with torch.no_grad():
        rank._params["0.weight"][0, 0] = float("nan")
    try:
        rank.save_checkpoint(str(folder) + "-nan")
        print("SAVED non-finite")
    except Exception as err:
        print("refused save:", str(err).splitlines()[0], (folder.parent / (folder.name + "-nan")).exists())
    try:
        rank.export_hf(str(folder) + "-hf")
        print("EXPORTED non-finite")
    except Exception as err:
        print("refused export:", str(err).splitlines()[0], (folder.parent / (folder.name + "-hf")).exists())
    rank.engine.save_checkpoint(str(folder) + "-nan", tag="state", save_latest=False)  # written around the guard
    shutil.copy(folder / "rng_rank0.pt", str(folder) + "-nan")
    with torch.no_grad():
        for n, p in rank._params.items():
            p.copy_(finite[n])
    try:
        rank.load_checkpoint(str(folder) + "-nan")
        print("LOADED non-finite")
    except Exception as err:
        print("refused load:", str(err).splitlines()[0])
"""


@pytest.mark.slow  # DeepSpeed ranks
@pytest.mark.parametrize("stage", [0, 2])
def test_learner_loads_are_weights_only(tmp_path: Path, stage: int) -> None:
    """A real DeepSpeed engine (CPU, one rank): its checkpoint round-trips, and a planted model-state, optimizer
    or RNG file is refused by the learner without its payload running. Weights with NaN are neither saved, nor
    exported, nor loaded."""
    marker = tmp_path / "payload-ran"
    targets = ["state/mp_rank_00_model_states.pt", "rng_rank0.pt"]
    if stage:
        targets.append("state/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    script = DEEPSPEED_SCRIPT.format(root=str(ROOT), stage=stage, folder=str(tmp_path / "ckpt"), marker=str(marker),
                                     targets=targets)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("round trip", "refused", "LOADED",
                                                                          "SAVED", "EXPORTED"))]
    nonfinite = ["refused save: learner: 1 parameter tensor(s) hold NaN or inf, so they are not checkpointed (the run "
                 "diverged); lower learner.lr, check the rewards, and resume from the last checkpoint False",
                 "refused export: learner: 1 parameter tensor(s) hold NaN or inf, so they are not exported (the run "
                 "diverged); lower learner.lr, check the rewards, and resume from the last checkpoint False",
                 "refused load: learner: 1 parameter tensor(s) of the checkpoint hold NaN or inf"] if stage == 0 else []
    assert lines == ["round trip ok"] + [f"refused {name} UnpicklingError" for name in targets] + nonfinite, \
        out.stdout
    assert not marker.exists()


def test_a_refused_save_keeps_the_last_finite_checkpoint(tmp_path: Path) -> None:
    """A learner that refuses to checkpoint non-finite weights: the step's save fails with its reason, in one
    line, and the previous checkpoint stays the newest."""
    from rlpost.config import RunError

    manager = CheckpointManager(str(tmp_path), keep=2)
    manager.save(2, writer(b"a" * 10), {})

    def diverged(folder: Path) -> None:
        raise RunError("learner: 3 parameter tensor(s) hold NaN or inf, so they are not checkpointed")

    with pytest.raises(CheckpointError) as err:
        manager.save(4, diverged, {})
    assert str(err.value).endswith("(RunError: learner: 3 parameter tensor(s) hold NaN or inf, so they are not "
                                   "checkpointed); the previous checkpoint step_000002 is intact")
    assert find_resume("auto", str(tmp_path)).name == "step_000002"


def test_a_refused_export_leaves_no_partial_folder_and_keeps_the_earlier_one(tmp_path: Path) -> None:
    """`export_final` with a learner that refuses non-finite weights: the refusal propagates as it is (one line),
    the temp folder is gone, and an `hf_model` from an earlier export is untouched."""
    from rlpost.config import RunError

    def good(folder: str) -> None:
        Path(folder, "model.safetensors").write_bytes(b"finite")

    def diverged(folder: str) -> None:
        Path(folder, "partial").write_bytes(b"")  # as if a rank had begun writing
        raise RunError("learner: 1 parameter tensor(s) hold NaN or inf, so they are not exported")

    final = export_final(good, str(tmp_path))
    with pytest.raises(RunError, match="so they are not exported$"):
        export_final(diverged, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"]
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors"]
