"""The pure half of the experience phase: from sampled completions, their scores and the per-token numbers the
learners computed (reference and sampling-policy logprobs, critic values) to the items the learners train on.

Per-token numbers travel between actors as ragged lists (one entry per completion token); the estimators want
[N, T] tensors with each completion left-aligned, so `padded` and `ragged` convert between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rlpost.algos import ADVANTAGES, KL_ESTIMATORS, masked_sum, token_level_rewards
from rlpost.algos.dynamic_sampling import tied_samples
from rlpost.rollout.engine import Sample


@dataclass
class TrainItem:
    """One sampled completion as the learners need it; the per-token lists have one entry per completion token."""

    prompt_ids: list[int]
    completion_ids: list[int]
    rollout_logprobs: list[float]
    advantages: list[float] = field(default_factory=list)  # pg objective
    old_logprobs: list[float] | None = None  # the sampling policy's (None: the first update's own, detached)
    ref_logprobs: list[float] | None = None
    values: list[float] | None = None  # the critic's, at experience time (ppo)
    returns: list[float] | None = None  # the critic's targets (ppo)
    in_loss: bool = True  # False: trained on by no loss and counted in no normaliser (algo.mask_truncated)
    tied: bool = False  # algo.skip_tied_groups: its group's scores all tie, so it is counted but not computed


@dataclass
class MiniBatch:
    """This rank's share of one mini-batch, plus the mini-batch's global counts (for loss normalisation)."""

    items: list[TrainItem]
    global_tokens: int
    global_seqs: int


def padded(rows: list[list[float]]) -> tuple[Tensor, Tensor]:
    """Ragged rows -> (values [N, T], mask [N, T]) with T the longest row; 0 and mask 0 after each row's end."""
    width = max((len(r) for r in rows), default=0)
    values, mask = torch.zeros(len(rows), width), torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        values[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
        mask[i, :len(row)] = 1.0
    return values, mask


def ragged(values: Tensor, lengths: list[int]) -> list[list[float]]:
    """The inverse of `padded`: each row's first `lengths[i]` entries."""
    return [values[i, :n].tolist() for i, n in enumerate(lengths)]


def pg_items(samples: list[Sample], scores: Tensor, algo: Any, kl_coef: float,
             ref_logprobs: list[list[float]] | None = None, old_logprobs: list[list[float]] | None = None,
             values: list[list[float]] | None = None) -> tuple[list[TrainItem], dict[str, float]]:
    """Token rewards (score on the last token, minus the KL penalty when `algo.kl_mode=reward`) -> the advantage
    estimator `algo.advantage` -> one TrainItem per sample.

    When both reference and sampling-policy logprobs are given, the samples' KL is measured (`kl/sequence`: the
    mean over sequences of the summed per-token estimate, what the adaptive controller steers).
    """
    lengths = [len(s.completion_ids) for s in samples]
    _, mask = padded([[0.0] * n for n in lengths])
    metrics: dict[str, float] = {}
    penalty = None
    if ref_logprobs is not None and old_logprobs is not None:
        kl = KL_ESTIMATORS.get(algo.kl_estimator)(padded(old_logprobs)[0], padded(ref_logprobs)[0])
        kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))
        metrics["kl/sequence"] = float(masked_sum(kl, mask, dim=-1).mean())
        if algo.kl_mode == "reward":
            penalty = kl
    rewards = token_level_rewards(scores, torch.tensor(lengths), mask.shape[1], penalty, kl_coef)
    value_tensor = padded(values)[0] if values is not None else None
    advantages, returns = ADVANTAGES.get(algo.advantage)(rewards, mask, algo, value_tensor)

    tied = tied_samples(scores.tolist(), algo.group_size) if algo.skip_tied_groups else [False] * len(samples)
    adv_rows = ragged(advantages, lengths)
    return_rows = ragged(returns, lengths) if returns is not None else None
    items = [TrainItem(s.prompt_ids, s.completion_ids, s.logprobs, advantages=adv_rows[i],
                       old_logprobs=old_logprobs[i] if old_logprobs is not None else None,
                       ref_logprobs=ref_logprobs[i] if ref_logprobs is not None else None,
                       values=values[i] if values is not None else None,
                       returns=return_rows[i] if return_rows is not None else None,
                       in_loss=not (algo.mask_truncated and s.finish_reason == "length"), tied=tied[i])
             for i, s in enumerate(samples)]
    keep = mask.bool()
    metrics["advantage/mean"] = float(advantages[keep].mean()) if keep.any() else 0.0
    metrics["advantage/abs_mean"] = float(advantages[keep].abs().mean()) if keep.any() else 0.0
    metrics["batch/masked_truncated_frac"] = sum(not it.in_loss for it in items) / max(len(items), 1)
    return items, metrics
