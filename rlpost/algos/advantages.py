"""Advantage estimators: token-level rewards [B, T] -> token-level advantages [B, T] (and returns, for a critic).

Every estimator is one registered function with the same signature,

    fn(token_rewards, mask, cfg, values=None) -> (advantages, returns)

- `token_rewards` [B, T]: each completion's outcome score on its last token, plus any per-token shaping (a KL
  penalty when `algo.kl_mode=reward`). Completion tokens are left-aligned: row b holds its tokens at t < length_b
  and `mask` [B, T] is 1 there, 0 on the padding after them.
- `values` [B, T]: the critic's V(s_t), the value of the state before token t is sampled (estimators registered
  with `needs_values=True` only).
- `cfg`: the `algo` config (reads group_size, std_normalize, gamma, lam).
- returns: the critic's regression targets, None for estimators without a critic.

Sequence-level estimators (grpo, dr_grpo, rloo) score each completion by the sum of its token rewards and give
every token of it the same advantage. Samples of one prompt are stored contiguously: sample i belongs to group
i // group_size. All estimators compute in float32; no gradient flows (rewards and values are data), and the
advantage is exactly 0 on padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlpost.algos.losses import masked_mean, masked_sum
from rlpost.algos.registry import Registry
from rlpost.config import AlgoConfig

ADVANTAGES = Registry("advantage estimator", "algo.advantage")
EPS = 1e-6


def _groups(token_rewards: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """Per-sequence scores (sum of token rewards) as [G, group_size]."""
    if token_rewards.dim() != 2 or token_rewards.shape != mask.shape:
        raise ValueError(f"token_rewards and mask must both be [B, T], got {tuple(token_rewards.shape)} and "
                         f"{tuple(mask.shape)}")
    if group_size < 1 or token_rewards.shape[0] % group_size != 0:
        raise ValueError(f"number of sequences ({token_rewards.shape[0]}) must be a multiple of group_size "
                         f"({group_size})")
    return masked_sum(token_rewards.detach().float(), mask, dim=-1).view(-1, group_size)


def _per_token(adv: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """[G, n] sequence advantages -> [B, T] token advantages; a group whose scores are all equal gets exactly 0.

    Equal scores carry no signal about which completion is better. We zero them explicitly rather than trust
    r - mean to round to 0 (the mean of [.1, .1, .1] is not exactly .1 in floating point) or 0 / (0 + eps) to
    stay small.
    """
    all_equal = (scores == scores[:, :1]).all(dim=1, keepdim=True)
    adv = torch.where(all_equal, torch.zeros_like(adv), adv).reshape(-1, 1)
    return torch.where(mask.bool(), adv.expand(mask.shape), torch.zeros(mask.shape))


def _whiten(x: Tensor, mask: Tensor, scale: bool) -> Tensor:
    """(x - mean) / (std + eps) over the masked entries of the whole batch (unbiased std); only centred if not
    `scale`. Exactly 0 when all masked entries are equal, and on padding."""
    keep = mask.bool()
    centered = x - masked_mean(x, keep)
    if scale and int(keep.sum()) > 1:
        var = masked_sum(centered**2, keep) / (keep.sum() - 1)
        centered = centered / (var.sqrt() + EPS)
    if keep.any() and bool((x[keep] == x[keep][0]).all()):
        centered = torch.zeros_like(centered)
    return torch.where(keep, centered, torch.zeros_like(centered))


def _discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s within each row's completion (padding rewards count as 0)."""
    r = torch.where(mask.bool(), token_rewards.detach().float(), torch.zeros(mask.shape))
    returns, running = torch.zeros_like(r), torch.zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        returns[:, t] = running
    return torch.where(mask.bool(), returns, torch.zeros_like(returns))


@ADVANTAGES.register("grpo", group_baseline=True)
def grpo_advantages(token_rewards: Tensor, mask: Tensor, cfg: AlgoConfig, values: Tensor | None = None
                    ) -> tuple[Tensor, None]:
    """Group-relative advantages (GRPO, DeepSeekMath arXiv 2402.03300): A_i = (r_i - mean_g) / (std_g + eps),
    or r_i - mean_g without `cfg.std_normalize`.

    std is the *unbiased* sample std (torch.std default), as in DeepSeekMath and TRL. E.g. rewards [1, 0, 0, 0]:
    mean .25, std sqrt(.75 / 3) = .5, advantages [1.5, -.5, -.5, -.5]. A group of size 1 gets 0 (no baseline).
    """
    scores = _groups(token_rewards, mask, cfg.group_size)
    adv = scores - scores.mean(dim=1, keepdim=True)
    if cfg.std_normalize and cfg.group_size > 1:
        adv = adv / (scores.std(dim=1, keepdim=True) + EPS)
    return _per_token(adv, scores, mask), None


@ADVANTAGES.register("dr_grpo", group_baseline=True)
def dr_grpo_advantages(token_rewards: Tensor, mask: Tensor, cfg: AlgoConfig, values: Tensor | None = None
                       ) -> tuple[Tensor, None]:
    """Dr. GRPO (Liu et al., arXiv 2503.20783): A_i = r_i - mean_g, never divided by the group std, which
    over-weights groups that are nearly all right or all wrong. (Its other half, no per-sequence length
    normalisation, is the loss aggregation `seq_mean_token_sum`, set by the preset.)"""
    scores = _groups(token_rewards, mask, cfg.group_size)
    return _per_token(scores - scores.mean(dim=1, keepdim=True), scores, mask), None


@ADVANTAGES.register("rloo", group_baseline=True)
def rloo_advantages(token_rewards: Tensor, mask: Tensor, cfg: AlgoConfig, values: Tensor | None = None
                    ) -> tuple[Tensor, None]:
    """REINFORCE leave-one-out (Ahmadian et al., arXiv 2402.14740): A_i = r_i - mean_{j != i} r_j, the baseline
    is the mean of the *other* samples of the prompt, so it does not depend on the sample it judges.
    Algebraically A_i = n / (n - 1) * (r_i - mean_g)."""
    n = cfg.group_size
    if n < 2:
        raise ValueError("rloo needs group_size >= 2: the leave-one-out baseline of a single sample is empty")
    scores = _groups(token_rewards, mask, n)
    others_mean = (scores.sum(dim=1, keepdim=True) - scores) / (n - 1)
    return _per_token(scores - others_mean, scores, mask), None


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, cfg: AlgoConfig, values: Tensor | None = None
                            ) -> tuple[Tensor, None]:
    """REINFORCE++ (Hu, arXiv 2501.03262): the discounted return of every token (gamma = `cfg.gamma`; 1 in the
    paper), normalised over the *global batch*, all tokens of all prompts together: (G - mean) / std (only
    centred without `cfg.std_normalize`). No critic and no per-prompt baseline, so it works with one sample per
    prompt; a per-token KL penalty in the reward (`algo.kl_mode=reward`) makes the returns differ by token."""
    _groups(token_rewards, mask, 1)  # shape checks
    returns = _discounted_returns(token_rewards, mask, cfg.gamma)
    return _whiten(returns, mask, scale=cfg.std_normalize), None


@ADVANTAGES.register("gae", needs_values=True)
def gae_advantages(token_rewards: Tensor, mask: Tensor, cfg: AlgoConfig, values: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., arXiv 1506.02438), for PPO with a learned critic.

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V = 0 after the last token (the
    episode ends there, at EOS or at the length limit). returns = A + V are the critic's targets (computed before
    whitening). With gamma = lam = 1, A_t = sum_{s >= t} r_s - V_t: the return minus the value. With
    `cfg.std_normalize` the advantages (not the returns) are whitened over the batch, as PPO implementations do.
    """
    if values is None:
        raise ValueError("gae needs the critic's values")
    _groups(token_rewards, mask, 1)
    keep = mask.bool()
    r = torch.where(keep, token_rewards.detach().float(), torch.zeros(mask.shape))
    v = torch.where(keep, values.detach().float(), torch.zeros(mask.shape))
    adv, running = torch.zeros_like(r), torch.zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        next_value = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros(r.shape[0])
        running = r[:, t] + cfg.gamma * next_value - v[:, t] + cfg.gamma * cfg.lam * running
        running = torch.where(keep[:, t], running, torch.zeros_like(running))
        adv[:, t] = running
    returns = torch.where(keep, adv + v, torch.zeros_like(adv))
    if cfg.std_normalize:
        adv = _whiten(adv, mask, scale=True)
    return adv, returns
