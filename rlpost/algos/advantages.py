"""Advantage estimators: per-sample rewards [N] -> per-sample advantages [N].

Layout convention shared with the rollout code: the N = num_prompts * group_size samples are stored with each
prompt's group contiguous, so sample i belongs to group i // group_size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlpost.algos.registry import Registry

ADVANTAGES = Registry("advantage estimator", "algo.advantage")


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, std_normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages (GRPO, DeepSeekMath): A_i = (r_i - mean_g) / (std_g + eps), or r_i - mean_g.

    Choices:
    - std is the *unbiased* sample std (torch.std default, Bessel's correction), as in DeepSeekMath and TRL.
      E.g. rewards [1, 0, 0, 0]: mean .25, std sqrt(.75 / 3) = .5, advantages [1.5, -.5, -.5, -.5].
    - A group whose rewards are all equal (including any group of size 1) gets exactly zero advantage: it
      carries no signal about which completion is better. We set it explicitly rather than trust r - mean to
      round to 0 (mean of [.1, .1, .1] is not exactly .1 in floating point) or 0 / (0 + eps) to stay small.
    - Computed in float32 whatever the input dtype; the result has the input's dtype. No gradient flows: rewards
      are data.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size})")
    r = rewards.detach().float().view(-1, group_size)  # [G, group_size]
    centered = r - r.mean(dim=1, keepdim=True)
    if std_normalize and group_size > 1:
        centered = centered / (r.std(dim=1, keepdim=True) + eps)
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)
    adv = torch.where(all_equal, torch.zeros_like(centered), centered)
    return adv.view(-1).to(rewards.dtype)
