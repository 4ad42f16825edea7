"""Checkpoints: complete-or-absent folders under `<run_dir>/checkpoints`, the newest K kept, and resume.

    checkpoints/step_000004/
        policy/            one folder per registered learner group (a critic group registers as "critic"):
                           DeepSpeed's module/optimizer/LR-scheduler states + each rank's RNG states
        driver.pt          step, prompt-loader position, driver RNG states, metrics rows so far
        meta.json          written last: step, config fingerprint, and every file with its size and SHA-256

Atomicity: everything is written into a hidden temp folder, every file is fsynced, then `meta.json` (itself
fsynced), and the folder is renamed into place (and the parent fsynced). A crash at any moment leaves either
the complete folder or a temp folder that is never loaded (and is removed by the next save).

Integrity and safety: a checkpoint is only loaded once every file matches meta.json (size and SHA-256) and no
file is there that meta.json does not list, so a damaged or altered file is refused before anything is
unpickled. Every `torch.load` of a checkpoint is weights-only (our own state is plain types and tensors), so even
a file planted together with a matching meta.json cannot run code. `trainer.resume=auto` skips damaged folders
with a warning and takes the newest intact one; if none is intact it stops rather than start over them.

The fingerprint records what a checkpoint is only valid for (model, algorithm, learner layout); resuming under a
different one is refused with one line naming the field, before any actor starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlpost.config import ConfigError, RunError

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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(path: Path) -> dict[str, dict[str, Any]]:
    """Every file under `path` with its size and SHA-256, keyed by its path relative to `path`."""
    return {str(p.relative_to(path)): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(path.rglob("*")) if p.is_file()}


def rng_state() -> dict[str, Any]:
    """Every RNG a process draws from: Python's, NumPy's global, torch's CPU and (if present) CUDA generators.
    Plain types and tensors only, so it loads with `torch.load(weights_only=True)`: NumPy's state as its dict
    form with the key as a list of ints."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {"key": numpy["state"]["key"].tolist(), "pos": int(numpy["state"]["pos"])}
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
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


def verify(path: Path, hashes: bool = True) -> dict[str, Any]:
    """The checkpoint's meta if it is intact: meta present, every recorded file at its recorded size and (with
    `hashes`) SHA-256, and no file that meta does not record. CheckpointError naming what is wrong otherwise.
    Without `hashes` only the sizes are compared: cheap, for deciding what to prune, never for loading."""
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: no {META} (its save was interrupted)")
    try:
        meta = json.loads(meta_file.read_text())
        recorded = {name: (int(rec["size"]), str(rec["sha256"])) for name, rec in meta["files"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be verified: {META} is unreadable or has no SHA-256 per "
                              f"file ({describe_error(err)}; checkpoints of rlpost before hashes are not loaded)"
                              ) from None
    for name, (size, _) in recorded.items():
        f = path / name
        actual = f.stat().st_size if f.is_file() else None
        if actual != size:
            state = "missing" if actual is None else f"{actual} bytes, expected {size}"
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is {state}")
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {META}
    if present - recorded.keys():
        raise CheckpointError(f"checkpoint {path} is altered: {sorted(present - recorded.keys())[0]} is not "
                              f"recorded in {META} (added after the save)")
    if hashes:
        for name, (_, digest) in recorded.items():
            if sha256(path / name) != digest:
                raise CheckpointError(f"checkpoint {path} is altered or damaged: {name} does not match its "
                                      f"SHA-256 in {META}")
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
        """Complete checkpoint folders (by file sizes, not hashes: this runs after every save), newest first."""
        out = []
        for path in self.step_dirs():
            try:
                verify(path, hashes=False)
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
        """The newest intact checkpoint; damaged ones are skipped with a warning. None if there is no checkpoint
        folder at all; CheckpointError if there are some but none is intact (a run must not start over them)."""
        damaged = []
        for path in self.step_dirs():
            try:
                verify(path)
                return path
            except CheckpointError as err:
                warn(f"[rlpost] warning: {err}; skipping it")
                damaged.append(path.name)
        if damaged:
            raise CheckpointError(f"trainer.resume: none of the {len(damaged)} checkpoint(s) in {self.root} is "
                                  f"intact ({', '.join(damaged)}; the warnings above say why); repair or delete "
                                  "them, or start fresh in another trainer.run_dir")
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
            meta = {**meta, "step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "files": file_records(tmp)}
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
            # A refusal of ours (non-finite weights) says its own fix; anything else is the disk's
            fix = "" if isinstance(getattr(err, "cause", None) or err, RunError) else \
                "; free space there or point trainer.run_dir elsewhere"
            raise CheckpointError(f"checkpoint step {step} could not be written to {self.root} ({describe_error(err)})"
                                  f"; {kept}{fix}") from err
        self.prune()
        print(f"[rlpost] checkpoint {final} ({time.perf_counter() - t0:.1f}s)", flush=True)
        return final


def export_final(export: Callable[[str], None], run_dir: str, what: str = "policy") -> Path:
    """The final model as a plain Hugging Face folder, `<run_dir>/hf_model`: `export(tmp)` (a learner group's
    `export_hf`) writes it into a temp folder that is then renamed, so `hf_model` never holds a partial export.
    If `export` fails (it refuses non-finite weights), the temp folder goes and an earlier `hf_model` stays."""
    final, tmp = Path(run_dir, "hf_model"), Path(run_dir, ".tmp-hf_model")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        export(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"[rlpost] final {what} exported to {final}", flush=True)
    return final


def find_resume(resume: str | None, run_dir: str) -> Path | None:
    """The checkpoint `trainer.resume` selects: None/"" = none; "auto" = the newest intact one of this run folder
    (no checkpoint yet: start fresh; only damaged ones: CheckpointError); a checkpoint folder; or a run folder
    (its newest intact checkpoint). The caller verifies the chosen one again before loading it."""
    if not resume:
        return None
    if resume == "auto":
        return CheckpointManager(run_dir, keep=0).latest()
    path = Path(resume).expanduser().resolve()
    if not path.exists():
        raise CheckpointError(f"trainer.resume={resume}: {path} does not exist; point it at a checkpoint folder "
                              f"(.../{CHECKPOINTS}/{PREFIX}NNNNNN) or a run folder, or use trainer.resume=auto")
    if (path / META).exists() or path.name.startswith(PREFIX):
        verify(path, hashes=False)  # named explicitly: an incomplete one is an error, not a warning
        return path
    for root in (path, path.parent):  # a run folder, or its checkpoints/ folder
        manager = CheckpointManager(str(root), keep=0)
        if manager.step_dirs():
            return manager.latest()
    raise CheckpointError(f"trainer.resume={resume}: no complete checkpoint there; point it at a checkpoint "
                          f"folder (.../{CHECKPOINTS}/{PREFIX}NNNNNN) or a run folder, or use trainer.resume=auto")


DRIVER_KEYS = ("step", "loader", "rng", "metrics")


def unsafe_globals(file: Path) -> list[str]:
    """The classes and functions a torch file would import when fully unpickled (read from its opcodes, nothing
    is run); [] if it is not a torch file at all."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:
        return []


def load_driver_state(path: Path) -> dict[str, Any]:
    """The driver's state, loaded weights-only: a pickle that would build anything but plain types and tensors
    (and so could run code) is refused without running it."""
    try:
        state = torch.load(path / DRIVER, weights_only=True)
    except Exception as err:
        unsafe = unsafe_globals(path / DRIVER)
        if unsafe:
            raise CheckpointError(f"trainer.resume: checkpoint {path} is refused: {DRIVER} holds objects other than "
                                  f"plain data and tensors ({', '.join(unsafe[:3])}), which could run code when "
                                  "loaded; resume only from checkpoints rlpost wrote, or delete that folder") from None
        # torch's weights-only error is a paragraph about trusting the source; here it only means damaged bytes
        reason = "not a readable torch file" if isinstance(err, pickle.UnpicklingError) else describe_error(err)
        raise CheckpointError(f"trainer.resume: checkpoint {path} is corrupt: {DRIVER} cannot be read ({reason}); "
                              "delete that folder to resume from an older one") from None
    missing = [k for k in DRIVER_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"trainer.resume: checkpoint {path} is corrupt: {DRIVER} has no {', '.join(missing)}"
                              "; delete that folder to resume from an older one")
    return state


def check_intact(path: Path) -> dict[str, Any]:
    """`verify` (sizes and hashes) for a checkpoint about to be loaded, its error naming the fix."""
    try:
        return verify(path)
    except CheckpointError as err:
        raise CheckpointError(f"trainer.resume: {err}; resume from an intact checkpoint (trainer.resume=auto takes "
                              "the newest) or delete that folder") from None
