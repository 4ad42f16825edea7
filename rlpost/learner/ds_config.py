"""DeepSpeed config and LR schedule for a learner group: pure functions of the rlpost config."""

from __future__ import annotations

import math
from typing import Any


def build_ds_config(zero_stage: int, micro_batch_size: int, grad_accum_steps: int, world_size: int,
                    grad_clip: float, dtype: str) -> dict[str, Any]:
    """A DeepSpeed config for a training engine.

    The optimizer is a torch one passed by the caller (`zero_allow_untested_optimizer`): DeepSpeed's own Adam
    JIT-compiles a C++/CUDA op at start-up (90-120 s on CPU), torch's AdamW needs nothing.
    """
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,  # rlpost logs its own metrics
        "wall_clock_breakdown": False,
    }
    if dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif dtype == "float16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16}
    if zero_stage == 3:
        # Gather whole layers, not fragments, and keep nothing resident: small models, clarity over tuning.
        cfg["zero_optimization"].update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0})
    return cfg


def build_ref_ds_config(zero_stage: int, micro_batch_size: int, world_size: int, dtype: str) -> dict[str, Any]:
    """The frozen reference model under ZeRO-3: parameters sharded like the policy's, no optimizer."""
    cfg = build_ds_config(zero_stage, micro_batch_size, 1, world_size, 0.0, dtype)
    cfg.pop("gradient_clipping")
    return cfg


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """LR as a fraction of the peak at optimizer step `step` (0-based): linear warm-up over `warmup_steps`
    (from 1/warmup to 1), then constant or cosine decay to `min_ratio` at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(total_steps - warmup_steps - 1, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"learner.lr_schedule={schedule!r}; choose constant or cosine")
