"""Will a training micro-batch fit beside engines that stay on the GPU? A start-up check, so that a co-resident
layout that cannot work (`cluster.colocate` with `rollout.sleep_level=0`: vLLM keeps its share of the GPU while
the learner trains) stops with one line instead of a CUDA out-of-memory traceback at the first step.

The estimate is a floor, not a forecast: it counts only what a step surely allocates on top of the built model
and optimizer (`free` is measured after them), so a refusal means it cannot fit.
- Gradients: one bf16/fp32 copy of the rank's parameters, allocated at the first backward (2 bytes each).
- The LM head's logits and their gradient: 2 x 2 bytes per token and vocabulary entry (bf16; the logprob
  kernel in `rlpost.logprobs` works on them in fp32 chunks, so its temporaries are bounded and left out).
- Activations saved for backward: 16 bytes per token, hidden unit and layer without gradient checkpointing
  (a transformer block saves at least its norm, attention and MLP inputs and the MLP's gated intermediates,
  ~40 h bytes per token for Qwen2/Llama shapes), 2 with it (the layer inputs only).
"""

from __future__ import annotations

from typing import Any

import torch

from rlpost.config import RunError

GB = 1024**3


def tokens_per_micro(cfg: dict) -> int:
    """The most tokens one micro-batch forward holds: the token budget when packing, else rows x max length."""
    lc = cfg["learner"]
    if lc["max_tokens_per_micro"] > 0:
        return int(lc["max_tokens_per_micro"])
    return int(lc["micro_batch_size"]) * (int(cfg["data"]["max_prompt_tokens"]) + int(cfg["rollout"]["max_new_tokens"]))


def step_memory_floor(num_params: int, tokens: int, vocab: int, hidden: int, layers: int,
                      gradient_checkpointing: bool) -> int:
    """Bytes a training micro-batch allocates at least, beyond the built model and optimizer (module docstring)."""
    grads = 2 * num_params
    logits = 2 * 2 * tokens * vocab
    activations = (2 if gradient_checkpointing else 16) * tokens * hidden * layers
    return grads + logits + activations


def check_step_fits(cfg: dict, num_params: int, vocab: int, hidden: int, layers: int, free_bytes: int) -> None:
    """RunError, one line, when the floor of a step's memory exceeds the GPU memory free after building."""
    lc = cfg["learner"]
    need = step_memory_floor(num_params, tokens_per_micro(cfg), vocab, hidden, layers, lc["gradient_checkpointing"])
    if need > free_bytes:
        raise RunError(
            f"learner: a training micro-batch needs at least {need / GB:.1f} GB on the GPU but {free_bytes / GB:.1f} "
            f"GB are free beside engines that stay awake (rollout.gpu_memory_utilization="
            f"{cfg['rollout']['gpu_memory_utilization']:g}, rollout.sleep_level={cfg['rollout']['sleep_level']}); "
            "lower rollout.gpu_memory_utilization, learner.micro_batch_size or learner.max_tokens_per_micro, set "
            "learner.gradient_checkpointing=true, or let the engines sleep (rollout.sleep_level=2, "
            "trainer.max_staleness=0)")


def check_rank_fits(rank: Any) -> None:
    """`check_step_fits` for a built learner rank (`rlpost.learner.actor.LearnerRank.setup`), on a GPU whose
    engines stay awake while it trains: a split layout's (engines elsewhere) or a co-resident one's. Sleeping
    colocated engines give their memory back for training, so there is nothing to check at start-up. A model
    without an LM head (a critic, a reward model) has no vocabulary-wide logits."""
    cfg = rank.cfg
    if rank.device.type != "cuda" or (rank.colocated and cfg["rollout"]["sleep_level"] > 0):
        return
    model = rank.engine.module
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    if rank.zero_stage >= 2:  # gradients are partitioned across the ranks
        params //= rank.world_size
    vocab = model.config.vocab_size if hasattr(model, "lm_head") else 1
    check_step_fits(cfg, params, vocab, model.config.hidden_size, model.config.num_hidden_layers,
                    torch.cuda.mem_get_info()[0])


def end_of_step_memory(rank: Any) -> dict[str, float]:
    """After a training step on a GPU: a colocated rank hands its cached activation memory back
    (`torch.cuda.empty_cache`) before the engine wakes up, and every rank reports, in GiB, the most it allocated
    since the last step ended (experience forwards, the step, the weight sync: `{prefix}/memory_peak_gb`) and what
    it keeps now (weights, gradients, optimizer state, and allocator segments it cannot return:
    `{prefix}/memory_held_gb`), which is what a colocated engine wakes up beside."""
    if rank.device.type != "cuda":
        return {}
    if rank.colocated:
        torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(rank.device) / GB
    torch.cuda.reset_peak_memory_stats(rank.device)
    held = torch.cuda.memory_reserved(rank.device) / GB
    return {f"{rank.prefix}/memory_peak_gb": peak, f"{rank.prefix}/memory_held_gb": held}
