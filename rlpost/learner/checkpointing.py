"""What a learner rank contributes to a checkpoint, as a mixin of `LearnerRank` (it uses the rank's `engine`,
`rank`, `tokenizer`, `_params` and `_gathered`).

DeepSpeed writes the module, optimizer and LR-scheduler states itself (`engine.save_checkpoint`, called on
every rank: under ZeRO each rank writes its optimizer shard, and the call is collective). Next to them each rank
writes its own RNG states, so a resumed rank continues the exact random streams (dropout, if a model has any).
The driver decides where (`path`), makes the folder atomic and verifies it; see `rlpost.checkpoint`.

Loading is weights-only throughout, so a checkpoint cannot run code in a learner (the driver has checked every
file's SHA-256 before this runs; this is the second wall). DeepSpeed's checkpoint engine asks torch for a full
unpickle (`weights_only=False`); `weights_only_loads` overrides that for the duration of the load and allows the
few DeepSpeed state classes its optimizer files hold (plain records: building them runs no code of the file's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rlpost.checkpoint import fsync_tree, rng_state, set_rng_state
from rlpost.config import RunError

TAG = "state"  # DeepSpeed's sub-folder name; one checkpoint per folder, so the tag is fixed
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # read by every torch.load call; overrides weights_only=False


def deepspeed_state_classes() -> list[type]:
    """The classes DeepSpeed 0.19's ZeRO optimizer states pickle, besides tensors and builtins (found with
    `torch.serialization.get_unsafe_globals_in_checkpoint` on stages 0-3)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every `torch.load` inside is weights-only, whatever its call site asks, with DeepSpeed's state classes
    allowed."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_state_classes()):
            yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


class CheckpointMixin:
    def nonfinite_tensors(self) -> int:
        """How many parameter tensors hold NaN or inf, over the group's ranks (each checks its own: its ZeRO-3
        shards, or its full copy). Collective: every rank calls it."""
        local = sum(not bool(torch.isfinite(getattr(p, "ds_tensor", p)).all()) for p in self._params.values())
        count = torch.tensor([local], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(count)
        return int(count.item())

    def refuse_nonfinite(self, refused: str) -> None:
        """RunError when any parameter holds NaN or inf: the run has diverged, and such weights are never written
        out (`refused` says what is not done). Every rank sees the same count, so all of them refuse."""
        bad = self.nonfinite_tensors()
        if bad:
            raise RunError(f"learner: {bad} parameter tensor(s) hold NaN or inf, so {refused} (the run diverged); "
                           "lower learner.lr, check the rewards, and resume from the last checkpoint")

    def save_checkpoint(self, path: str) -> None:
        """Write this rank's part of the group's checkpoint into `path` (a folder every rank can reach). Weights
        with NaN or inf are never written, so the last finite checkpoint stays the newest one."""
        self.refuse_nonfinite("they are not checkpointed")
        self.engine.save_checkpoint(path, tag=TAG, save_latest=False)
        torch.save(rng_state(), os.path.join(path, f"rng_rank{self.rank}.pt"))
        fsync_tree(path)  # this rank's bytes are on disk before the driver declares the checkpoint complete

    def load_checkpoint(self, path: str) -> None:
        """Restore module, optimizer, LR scheduler and this rank's RNG states from `path`."""
        with weights_only_loads():
            loaded, _ = self.engine.load_checkpoint(path, tag=TAG, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}/{TAG}")
        bad = self.nonfinite_tensors()
        if bad:
            raise RunError(f"learner: {bad} parameter tensor(s) of the checkpoint hold NaN or inf")
        set_rng_state(torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=True))

    def export_hf(self, path: str) -> None:
        """Rank 0 writes the policy as a plain Hugging Face folder (weights + config + tokenizer) into `path`.
        Every rank must call this: under ZeRO-3 parameters are gathered one at a time, collectively, so peak
        extra memory is one parameter and the folder holds the full weights in the training dtype. Weights with
        NaN or inf are refused before anything is written, as for a checkpoint."""
        self.refuse_nonfinite("they are not exported")
        state = {}
        for name in self._params:
            with self._gathered([name]) as (tensor,):
                if self.rank == 0:
                    state[name] = tensor.detach().to("cpu", copy=True)
        if self.rank == 0:
            self.engine.module.save_pretrained(path, state_dict=state)
            self.tokenizer.save_pretrained(path)
            fsync_tree(path)
