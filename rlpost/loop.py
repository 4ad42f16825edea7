"""What the online and the offline training loops share: the collapse guards and the note that tells a stopped run
where to continue from.

The collapse guards (`trainer.max_kl`, `trainer.min_entropy`) read a step's metrics in the driver: the learner
already reports the policy's KL to the reference and its entropy every step, so no actor needs to know about them.
They complement the learner's non-finite guard (`learner.max_skipped_updates`): a run can diverge with every
number finite, e.g. a learning rate so large that the policy turns deterministic (entropy 0) in a few steps.
"""

from __future__ import annotations

from pathlib import Path

from rlpost import checkpoint as ckpt
from rlpost.config import RunError

# (metric, config field, whether the metric must stay below the field's value) for each collapse guard
COLLAPSE_GUARDS = (("actor/kl", "trainer.max_kl", True), ("actor/entropy", "trainer.min_entropy", False))


def collapse(metrics: dict[str, float], max_kl: float, min_entropy: float) -> str | None:
    """Why this step's metrics say the policy collapsed, or None. A limit of 0 is off; a step without the metric
    (a DPO step with no pair, a critic warm-up step) or with a NaN value (the non-finite guard's case) passes."""
    limits = {"trainer.max_kl": max_kl, "trainer.min_entropy": min_entropy}
    for metric, field, upper in COLLAPSE_GUARDS:
        limit, value = limits[field], metrics.get(metric)
        if limit > 0 and value is not None and (value > limit if upper else value < limit):
            return f"{metric}={value:.4g} is {'above' if upper else 'below'} {field}={limit:g}"
    return None


def last_checkpoint_note(checkpoints: ckpt.CheckpointManager) -> str:
    """Where a stopped run continues from: its newest complete checkpoint."""
    latest: list[Path] = checkpoints.complete()
    return (f"the last checkpoint is {latest[0]} (trainer.resume=auto continues from it)" if latest
            else "no checkpoint was written yet")


def stop_if_collapsed(step: int, metrics: dict[str, float], max_kl: float, min_entropy: float,
                      checkpoints: ckpt.CheckpointManager) -> None:
    """RunError, one line, when step `step` collapsed (`collapse`). Called before the step is checkpointed: a
    collapsed policy is never saved, and the checkpoints before it are neither replaced nor pruned."""
    reason = collapse(metrics, max_kl, min_entropy)
    if reason is not None:
        raise RunError(f"step {step}: {reason}: the policy collapsed and this step is not checkpointed; "
                       f"{last_checkpoint_note(checkpoints)}; lower learner.lr, or move the threshold")
