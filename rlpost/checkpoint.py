"""Checkpoints: complete-or-absent folders under `<run_dir>/checkpoints`, the newest K kept, and resume.

    checkpoints/step_000004/
        policy/            one folder per registered learner group (a critic group registers as "critic"):
                           DeepSpeed's module/optimizer/LR-scheduler states + each rank's RNG states
        driver.pt          step, prompt-loader position, driver RNG states, metrics rows so far
        meta.json          written last: step, config fingerprint, and every file with its size

Atomicity: everything is written into a hidden temp folder, every file is fsynced, then `meta.json` (itself
fsynced), and the folder is renamed into place (and the parent fsynced). A crash at any moment leaves either
the complete folder or a temp folder that is never loaded (and is removed by the next save). A finished folder
whose files were damaged afterwards (a file missing or truncated: its size differs from meta.json) is skipped
with a warning by `trainer.resume=auto`.

The fingerprint records what a checkpoint is only valid for (model, algorithm, learner layout); resuming under a
different one is refused with one line naming the field, before any actor starts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlpost.config import ConfigError

CHECKPOINTS = "checkpoints"
META = "meta.json"
DRIVER = "driver.pt"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be written or resumed from, as one line naming the cause and the fix."""


def describe_error(err: BaseException) -> str:
    """Ray wraps an actor's exception in a multi-line RayTaskError; its `cause` is the original one."""
    err = getattr(err, "cause", None) or err
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and folder under `path` (and `path` itself), so a rename after it publishes only bytes
    that are on disk."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sizes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def rng_state() -> dict[str, Any]:
    """Every RNG a process draws from: Python's, NumPy's global, torch's CPU and (if present) CUDA generators."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fingerprint(cfg: Any, model_path: str) -> dict[str, Any]:
    """What a checkpoint is only valid for, keyed by config field: the model (path and architecture), the
    algorithm, and the learner layout (DeepSpeed shards optimizer state by rank count and ZeRO stage)."""
    arch_file = Path(model_path, "config.json")
    arch = json.loads(arch_file.read_text()) if arch_file.exists() else {}
    return {
        "model.path": os.path.abspath(model_path),
        "model.architecture": {k: arch.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                        "vocab_size")},
        "model.dtype": cfg.model.dtype,
        "algo.name": cfg.algo.name,
        "algo.advantage": cfg.algo.advantage,
        "algo.policy_loss": cfg.algo.policy_loss,
        "learner.num_ranks": cfg.learner.num_ranks,
        "learner.zero_stage": cfg.learner.zero_stage,
    }


def check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    diffs = [f"{k} was {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"trainer.resume: checkpoint {path} does not fit this config ({'; '.join(diffs)}); "
                              "resume with the settings it was written with, or start fresh with trainer.resume=null")


def verify(path: Path) -> dict[str, Any]:
    """The checkpoint's meta if it is complete (meta present, every recorded file at its recorded size);
    CheckpointError naming what is wrong otherwise."""
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: no {META} (its save was interrupted)")
    try:
        meta = json.loads(meta_file.read_text())
        recorded = meta["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} is unreadable ({describe_error(err)})") from None
    for name, size in recorded.items():
        f = path / name
        actual = f.stat().st_size if f.is_file() else None
        if actual != size:
            state = "missing" if actual is None else f"{actual} bytes, expected {size}"
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is {state}")
    return meta


class CheckpointManager:
    """The checkpoints of one run folder."""

    def __init__(self, run_dir: str, keep: int) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep = keep

    def step_dirs(self) -> list[Path]:
        """Finished checkpoint folders (complete or not), newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir()
                       if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()),
                      key=lambda p: int(p.name[len(PREFIX):]), reverse=True)

    def complete(self) -> list[Path]:
        """Complete checkpoint folders, newest first."""
        out = []
        for path in self.step_dirs():
            try:
                verify(path)
                out.append(path)
            except CheckpointError:
                pass
        return out

    def prune(self) -> None:
        """Delete complete checkpoints beyond the newest `keep`. Damaged ones are left for a person to look at
        (resume skips them) and do not count towards `keep`."""
        for path in self.complete()[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)

    def latest(self, warn: Callable[[str], None] = print) -> Path | None:
        """The newest complete checkpoint; incomplete ones are skipped with a warning."""
        for path in self.step_dirs():
            try:
                verify(path)
                return path
            except CheckpointError as err:
                warn(f"[rlpost] warning: {err}; skipping it")
        return None

    def save(self, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        """Write checkpoint `step` atomically: `write(tmp)` fills a temp folder; then fsync, meta.json, rename,
        prune to the newest `keep`. If anything fails the temp folder is removed, the existing checkpoints are
        untouched, and CheckpointError says why."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(TMP_PREFIX + "*"):  # left by a save that was killed; never loadable
            shutil.rmtree(stale, ignore_errors=True)
        final = self.root / f"{PREFIX}{step:06d}"
        tmp = self.root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        t0 = time.perf_counter()
        try:
            tmp.mkdir()
            write(tmp)
            fsync_tree(tmp)
            meta = {**meta, "step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "files": file_sizes(tmp)}
            with open(tmp / META, "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():  # re-running a step after resuming from an older checkpoint: replace it
                replaced = self.root / f"{TMP_PREFIX}{final.name}-replaced"
                final.rename(replaced)
                tmp.rename(final)
                shutil.rmtree(replaced, ignore_errors=True)
            else:
                tmp.rename(final)
            _fsync_dir(self.root)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = next((p.name for p in self.complete() if p != final), None)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointError(f"checkpoint step {step} could not be written to {self.root} ({describe_error(err)})"
                                  f"; {kept}; free space there or point trainer.run_dir elsewhere") from err
        self.prune()
        print(f"[rlpost] checkpoint {final} ({time.perf_counter() - t0:.1f}s)", flush=True)
        return final


def export_final(export: Callable[[str], None], run_dir: str, what: str = "policy") -> Path:
    """The final model as a plain Hugging Face folder, `<run_dir>/hf_model`: `export(tmp)` (a learner group's
    `export_hf`) writes it into a temp folder that is then renamed, so `hf_model` never holds a partial export."""
    final, tmp = Path(run_dir, "hf_model"), Path(run_dir, ".tmp-hf_model")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    export(str(tmp))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"[rlpost] final {what} exported to {final}", flush=True)
    return final


def find_resume(resume: str | None, run_dir: str) -> Path | None:
    """The checkpoint `trainer.resume` selects: None/"" = none; "auto" = the newest complete one of this run
    folder (none: start fresh); a checkpoint folder; or a run folder (its newest complete checkpoint)."""
    if not resume:
        return None
    if resume == "auto":
        return CheckpointManager(run_dir, keep=0).latest()
    path = Path(resume).expanduser().resolve()
    if not path.exists():
        raise CheckpointError(f"trainer.resume={resume}: {path} does not exist; point it at a checkpoint folder "
                              f"(.../{CHECKPOINTS}/{PREFIX}NNNNNN) or a run folder, or use trainer.resume=auto")
    if (path / META).exists() or path.name.startswith(PREFIX):
        verify(path)  # named explicitly: an incomplete one is an error, not a warning
        return path
    for root in (path, path.parent):  # a run folder, or its checkpoints/ folder
        found = CheckpointManager(str(root), keep=0).latest()
        if found is not None:
            return found
    raise CheckpointError(f"trainer.resume={resume}: no complete checkpoint there; point it at a checkpoint "
                          f"folder (.../{CHECKPOINTS}/{PREFIX}NNNNNN) or a run folder, or use trainer.resume=auto")


DRIVER_KEYS = ("step", "loader", "rng", "metrics")


def load_driver_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path / DRIVER, weights_only=False)
        missing = [k for k in DRIVER_KEYS if k not in state]
        if missing:
            raise KeyError(f"no {', '.join(missing)} in it")
        return state
    except Exception as err:
        raise CheckpointError(f"trainer.resume: checkpoint {path} is corrupt: {DRIVER} cannot be read "
                              f"({describe_error(err)}); delete that folder to resume from an older one") from None
