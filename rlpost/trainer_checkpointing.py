"""What the driver contributes to a checkpoint, and how a run resumes and exports: a mixin of both drivers
(`rlpost.loop.TrainLoop`: the online `Trainer` and the offline `OfflineTrainer`). It uses the driver's `loader`,
`run_dir`, `checkpoints`, `fingerprint`, `checkpoint_groups` and `learners`; `driver_state` and `restore_driver`
are where a driver adds state of its own (the online one: the loader as before the in-flight batches, the adaptive
KL coefficient, the DPO pair sampler, and the weight sync to its engines).

A checkpoint folder holds one sub-folder per learner group (`rlpost/learner/checkpointing.py` writes those) and
the driver's state: the step, the loader's position (prompts online, pairs offline), the RNG streams and the
metrics record so far, all plain types (loaded weights-only). The layout, atomic publishing, SHA-256 hashes and the
choice of a checkpoint to resume from are `rlpost.checkpoint`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rlpost import checkpoint as ckpt
from rlpost.cluster.groups import ActorDied
from rlpost.report import read_metrics


class TrainerCheckpointing:
    export_name = "policy"  # what `export_hf` says it exported

    def driver_state(self) -> dict[str, Any]:
        """The driver's own state besides the step, the RNG streams and the metrics: plain types only."""
        return {"loader": self.loader.state_dict()}

    def restore_driver(self, state: dict[str, Any]) -> None:
        """After the groups loaded their state: what the driver itself continues from `driver_state`'s keys (the
        loader's position is restored earlier, by `prepare_resume`)."""

    def save_checkpoint(self, step: int) -> Path:
        state = {"step": step, "rng": ckpt.rng_state(), "metrics": read_metrics(self.run_dir), **self.driver_state()}

        def write(folder: Path) -> None:
            for name, group in self.checkpoint_groups.items():
                (folder / name).mkdir()
                group.save_checkpoint(str(folder / name))
            torch.save(state, folder / ckpt.DRIVER)

        try:
            return self.checkpoints.save(step, write, {"fingerprint": self.fingerprint,
                                                       "groups": sorted(self.checkpoint_groups)})
        except ckpt.CheckpointError as err:
            if isinstance(err.__cause__, ActorDied):  # not the disk's fault: report the death (TrainLoop.fit)
                raise err.__cause__ from None
            raise

    def prepare_resume(self, path: Path) -> None:
        """Before any actor starts: the checkpoint is intact (every file matches its SHA-256, before anything is
        unpickled), fits this config, and its driver state loads (weights-only)."""
        meta = ckpt.check_intact(path)
        ckpt.check_compatible(path, meta["fingerprint"], self.fingerprint)
        state = ckpt.load_driver_state(path)
        try:
            self.loader.load_state_dict(state["loader"])
        except ValueError as err:
            raise ckpt.CheckpointError(f"trainer.resume: {err}") from None
        self.resume_from, self.resume_state, self.resume_groups = path, state, meta["groups"]

    def restore(self) -> None:
        """After `start`: every group loads its state, then the driver's (`restore_driver`), and the driver
        continues its RNG streams and its metrics record where the checkpoint left them."""
        path, state = self.resume_from, self.resume_state
        missing = sorted(set(self.checkpoint_groups) - set(self.resume_groups))
        if missing:
            raise ckpt.CheckpointError(f"trainer.resume: checkpoint {path} has no state for {missing} (it holds "
                                       f"{self.resume_groups}); start fresh with trainer.resume=null")
        for name, group in self.checkpoint_groups.items():
            try:
                group.load_checkpoint(str(path / name))
            except Exception as err:
                raise ckpt.CheckpointError(f"trainer.resume: checkpoint {path} is corrupt: the {name} group cannot "
                                           f"load it ({ckpt.describe_error(err)}); delete that folder to resume from "
                                           "an older one") from None
        self.restore_driver(state)
        ckpt.set_rng_state(state["rng"])
        self.start_step = state["step"]
        # The record continues from the checkpoint: rows a killed run logged after it are replayed identically.
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in state["metrics"])
        print(f"[rlpost] resumed from {path} at step {self.start_step}", flush=True)

    def export_hf(self) -> Path:
        """The final model as a plain Hugging Face folder, `<run_dir>/hf_model` (`rlpost.checkpoint.export_final`)."""
        return ckpt.export_final(self.learners.export_hf, self.run_dir, self.export_name)
