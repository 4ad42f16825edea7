"""Reward shaping between the reward functions and the advantage estimator, and the KL coefficient controller.

- `overlong_penalty`: DAPO's soft penalty for completions that run into the length limit.
- `token_level_rewards`: each completion's score on its last token, minus a per-token KL penalty when the KL to
  the reference is part of the reward (`algo.kl_mode=reward`, as in PPO-RLHF, RLOO and REINFORCE++).
- `adaptive_kl_coef`: the proportional controller of Ziegler et al. that steers the KL towards a target.
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's overlong reward shaping (arXiv 2503.14476, eq. 13), per completion [N]:
    0 up to max_len - buffer tokens, then falling linearly to -factor at max_len (and below, were a completion
    ever longer). A truncated completion (length = max_len) gets -factor; buffer = 0 turns the penalty off."""
    if buffer <= 0:
        return torch.zeros(lengths.shape)
    exceed = lengths.float() - (max_len - buffer)
    return (-exceed / buffer * factor).clamp(max=0.0)


def token_level_rewards(scores: Tensor, lengths: Tensor, width: int, kl: Tensor | None = None,
                        kl_coef: float = 0.0) -> Tensor:
    """[N] scores -> [N, width] rewards: the score on token length - 1 (the completion's last token), minus
    kl_coef * kl [N, width] on every token when a KL penalty is given. Completions have at least one token."""
    rewards = torch.zeros(len(scores), width)
    rewards[torch.arange(len(scores)), lengths.long() - 1] = scores.float()
    if kl is not None:
        rewards = rewards - kl_coef * kl.float()
    return rewards


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: int, n_samples: int) -> float:
    """The adaptive KL controller of Ziegler et al. (arXiv 1909.08593, sec. 2.2), also PPO's (arXiv 1707.06347):
    e = clip(KL / target - 1, -0.2, 0.2), coef <- coef * (1 + e * n_samples / horizon).

    `observed_kl` is the mean per-sequence KL of the batch just sampled, `n_samples` the batch's size: the
    coefficient rises when the policy drifts past the target and falls when it stays inside, at a rate set by
    `horizon` (in samples). target <= 0 means a fixed coefficient (returned unchanged)."""
    if target <= 0:
        return coef
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_samples / horizon)
