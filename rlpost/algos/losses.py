"""Per-token loss pieces for policy-gradient post-training: PPO-clip surrogate, KL estimators, aggregation.

Shapes: B sequences (completions) by T tokens; `mask` [B, T] is 1 (or True) on completion tokens that count
and 0 on prompt and padding tokens. Every function here masks with `torch.where`, not by multiplying, so a
NaN or inf sitting at a masked position (e.g. a padding logprob) cannot leak into the result as inf * 0 = NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlpost.algos.registry import Registry

KL_ESTIMATORS = Registry("KL estimator", "algo.kl_estimator")
LOSS_AGGREGATIONS = Registry("loss aggregation", "algo.loss_agg")
POLICY_LOSSES = Registry("policy loss", "algo.policy_loss")


# ---------------------------------------------------------------------------------------------------------------
# masking helpers


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x where mask is set (over all elements, or along `dim`)."""
    masked = torch.where(mask.bool(), x, torch.zeros_like(x))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x where mask is set; 0 (not NaN) where the mask is empty."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.to(x.dtype).clamp(min=1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: [..., V] -> [...].

    H = -sum_v p_v log p_v with log p = logits - logsumexp(logits): logsumexp subtracts the max, so large logits
    never overflow exp. Runs in the logits' dtype; upcast before calling if bf16 precision is not enough.
    """
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(logp.exp() * logp).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# KL(policy || reference) estimators, per token, from samples drawn from the policy (http://joschu.net/blog/kl-approx.html)
# With log_ratio = log pi_ref(x) - log pi(x):


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = -log_ratio: unbiased, high variance, negative on some samples."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = log_ratio**2 / 2: biased, low variance, always >= 0."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(log_ratio) - log_ratio - 1: unbiased, low variance, always >= 0 (the GRPO paper's choice).

    log_ratio is clamped to [-20, 20] first: a token the policy has drifted far from would make exp() overflow
    (fp32 beyond ~88, bf16/fp16 much sooner) to inf and poison the loss and gradients with inf/NaN. exp(20) ~ 5e8
    is already a huge penalty, so the clamp changes nothing that training should care about.
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return log_ratio.exp() - log_ratio - 1


# ---------------------------------------------------------------------------------------------------------------
# Loss aggregation: per-token loss [B, T] -> scalar.
#
# Why the explicit normalizers: a learner splits one mini-batch into micro-batches (gradient accumulation) and
# across data-parallel ranks, then sums the gradients. If each micro-batch divided by its OWN token count, the
# result would weight tokens of short micro-batches more and depend on how the batch happened to be split. Passing
# the GLOBAL count (total masked tokens / sequences of the whole mini-batch, summed over micro-batches and ranks)
# makes the summed micro-batch losses equal, term for term, the loss of the whole mini-batch computed at once, so
# the gradient is the same too. Left as None, each defaults to the count in the tensors given.


@LOSS_AGGREGATIONS.register("token_mean")
def token_mean(
    per_token: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None
) -> Tensor:
    """sum(loss * mask) / num_tokens (default: mask.sum()): every token weighs the same (DAPO's choice)."""
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    return masked_sum(per_token, mask) / num_tokens


@LOSS_AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    per_token: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None
) -> Tensor:
    """sum over sequences of sum_t(loss * mask) / num_seqs (default: B): long answers weigh more.

    No per-sequence length normalization, which Dr. GRPO argues biases GRPO towards long wrong answers.
    """
    if num_seqs is None:
        num_seqs = per_token.shape[0]
    return masked_sum(per_token, mask) / num_seqs


@LOSS_AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    per_token: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None
) -> Tensor:
    """sum over sequences of mean_t(loss) / num_seqs (default: B): every sequence weighs the same (original GRPO).

    A sequence with no masked tokens contributes 0 (its token count is clamped to 1).
    """
    if num_seqs is None:
        num_seqs = per_token.shape[0]
    return masked_mean(per_token, mask, dim=-1).sum() / num_seqs


# ---------------------------------------------------------------------------------------------------------------
# Policy losses


@POLICY_LOSSES.register("clipped")
def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[Tensor, Tensor]:
    """PPO-clip surrogate, per token: -min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A).

    ratio = exp(logprobs - old_logprobs). `advantages` is [B] (one per sequence, as GRPO gives, broadcast over
    tokens) or [B, T]. clip_low != clip_high gives DAPO's asymmetric "clip-higher". The min makes the objective
    pessimistic: clipping only ever removes the incentive to move the ratio further in the advantage's direction.

    Returns (per-token loss [B, T] with 0 at masked positions, clip fraction): the fraction of masked-in tokens
    where the clipped branch was selected, i.e. the clipped objective is strictly smaller than the unclipped one
    (a detached scalar, for logging).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    keep = mask.bool()
    # Zero the log ratio at masked positions before exp: padding logprobs may be arbitrary, and an inf ratio there
    # would turn the (zero) gradient through torch.where into 0 * inf = NaN.
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    clip_frac = masked_mean((clipped < unclipped).float(), keep).detach()
    return loss, clip_frac
