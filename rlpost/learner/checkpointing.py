"""What a learner rank contributes to a checkpoint, as a mixin of `LearnerRank` (it uses the rank's `engine`,
`rank`, `tokenizer`, `_params` and `_gathered`).

DeepSpeed writes the module, optimizer and LR-scheduler states itself (`engine.save_checkpoint`, called on
every rank: under ZeRO each rank writes its optimizer shard, and the call is collective). Next to them each rank
writes its own RNG states, so a resumed rank continues the exact random streams (dropout, if a model has any).
The driver decides where (`path`), makes the folder atomic and verifies it; see `rlpost.checkpoint`.
"""

from __future__ import annotations

import os

import torch

from rlpost.checkpoint import fsync_tree, rng_state, set_rng_state

TAG = "state"  # DeepSpeed's sub-folder name; one checkpoint per folder, so the tag is fixed


class CheckpointMixin:
    def save_checkpoint(self, path: str) -> None:
        """Write this rank's part of the group's checkpoint into `path` (a folder every rank can reach)."""
        self.engine.save_checkpoint(path, tag=TAG, save_latest=False)
        torch.save(rng_state(), os.path.join(path, f"rng_rank{self.rank}.pt"))
        fsync_tree(path)  # this rank's bytes are on disk before the driver declares the checkpoint complete

    def load_checkpoint(self, path: str) -> None:
        """Restore module, optimizer, LR scheduler and this rank's RNG states from `path`."""
        loaded, _ = self.engine.load_checkpoint(path, tag=TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}/{TAG}")
        set_rng_state(torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=False))

    def export_hf(self, path: str) -> None:
        """Rank 0 writes the policy as a plain Hugging Face folder (weights + config + tokenizer) into `path`.
        Every rank must call this: under ZeRO-3 parameters are gathered one at a time, collectively, so peak
        extra memory is one parameter and the folder holds the full weights in the training dtype."""
        state = {}
        for name in self._params:
            with self._gathered([name]) as (tensor,):
                if self.rank == 0:
                    state[name] = tensor.detach().to("cpu", copy=True)
        if self.rank == 0:
            self.engine.module.save_pretrained(path, state_dict=state)
            self.tokenizer.save_pretrained(path)
            fsync_tree(path)
