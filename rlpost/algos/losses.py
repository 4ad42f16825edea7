"""Loss pieces for post-training: policy losses (PPO-clip, dual clip, GSPO), KL estimators, aggregation, the
critic's clipped value loss, the preference losses of DPO (sigmoid, IPO) and the reward model's (Bradley-Terry).

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
# fn(chosen, rejected, ref_chosen, ref_rejected, beta) -> (loss [P], implicit reward margin [P], detached)
DPO_LOSSES = Registry("DPO loss", "algo.dpo_loss")
# fn(chosen_scores, rejected_scores) -> (loss [P], score margin [P], detached)
REWARD_MODEL_LOSSES = Registry("reward-model loss", "algo.rm_loss")


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
# Policy losses. One signature for all:
#     fn(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, clip_c) -> (per-token loss, clip fraction)
# `advantages` is [B] (one per sequence, broadcast over tokens) or [B, T]. The loss is 0 at masked positions; the
# clip fraction is the share of masked-in tokens whose loss differs from the unclipped -ratio * A (a detached
# scalar, for logging).


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, keep: Tensor, clip_low: float, clip_high: float,
                       clip_c: float) -> tuple[Tensor, Tensor]:
    """-min(ratio A, clamp(ratio, 1 - clip_low, 1 + clip_high) A), then, with clip_c > 1 and A < 0, at most
    -clip_c A (dual clip)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    unclipped = -ratio * advantages
    loss = torch.maximum(unclipped, -ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages)
    if clip_c > 0:
        loss = torch.where(advantages < 0, torch.minimum(loss, -clip_c * advantages), loss)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    clip_frac = masked_mean((loss != unclipped).float(), keep).detach()
    return loss, clip_frac


@POLICY_LOSSES.register("clipped")
def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    clip_c: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """PPO-clip surrogate per token, ratio = exp(logprobs - old_logprobs):
    -min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A).

    - clip_low != clip_high gives DAPO's asymmetric "clip-higher" (arXiv 2503.14476): a larger clip_high leaves
      room to raise the probability of unlikely tokens, which keeps entropy from collapsing.
    - The min makes the objective pessimistic: clipping only ever removes the incentive to move the ratio further
      in the advantage's direction.
    - clip_c > 1 adds dual clip (Ye et al., arXiv 1912.09729): for A < 0 the loss is capped at -clip_c * A, so a
      token whose ratio has grown huge cannot produce an unbounded loss and gradient. 0 turns it off.
    """
    keep = mask.bool()
    # Zero the log ratio at masked positions before exp: padding logprobs may be arbitrary, and an inf ratio there
    # would turn the (zero) gradient through torch.where into 0 * inf = NaN.
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))
    return _clipped_surrogate(log_ratio.exp(), advantages, keep, clip_low, clip_high, clip_c)


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    clip_c: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """GSPO (Zheng et al., arXiv 2507.18071): one importance ratio per *sequence*,
    s_i = exp(mean_t log(pi / pi_old)), clipped like PPO's (the paper's clip range is tiny, e.g. 3e-4 / 4e-4).

    Written in the paper's GSPO-token form: every token's ratio has the value s_i, and its gradient is
    s_i * grad log pi(y_t) (exp(logp - sg(logp) + sg(log s_i))). Aggregated with `seq_mean_token_mean`, the mean
    over a sequence's tokens of s_i grad log pi(y_t) A_i is exactly GSPO's gradient s_i A_i grad log s_i.
    """
    keep = mask.bool()
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))
    seq_log_ratio = masked_mean(log_ratio, keep, dim=-1).clamp(max=20.0)  # [B]; clamp: exp must stay finite
    token_log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
    token_log_ratio = torch.where(keep, token_log_ratio, torch.zeros_like(token_log_ratio))
    return _clipped_surrogate(token_log_ratio.exp(), advantages, keep, clip_low, clip_high, clip_c)


# ---------------------------------------------------------------------------------------------------------------
# Critic and preference losses


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
                       ) -> tuple[Tensor, Tensor]:
    """PPO's value loss per token: 0.5 * max((V - R)^2, (V_old + clamp(V - V_old, -clip, clip) - R)^2).

    Like the policy's ratio clip, the value clip keeps the critic near the values it had when the experience
    was collected (the max is pessimistic: clipping never makes the loss smaller). clip <= 0: plain
    0.5 * (V - R)^2. Returns (per-token loss, 0 where masked; fraction of masked-in tokens where the clipped
    branch was the larger one, detached).
    """
    keep = mask.bool()
    plain = (values - returns) ** 2
    if clip > 0:
        clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
        loss = 0.5 * torch.maximum(plain, clipped)
        clip_frac = masked_mean((clipped > plain).float(), keep).detach()
    else:
        loss, clip_frac = 0.5 * plain, torch.zeros(())
    return torch.where(keep, loss, torch.zeros_like(loss)), clip_frac


def sequence_logprob(logprobs: Tensor, mask: Tensor, length_normalize: bool = False) -> Tensor:
    """log pi(y | x) of each sequence [B, T] -> [B]: the sum of its token logprobs, or their mean with
    `length_normalize` (length-normalised DPO: long completions no longer dominate the margin)."""
    return masked_mean(logprobs, mask, dim=-1) if length_normalize else masked_sum(logprobs, mask, dim=-1)


@DPO_LOSSES.register("sigmoid")
def dpo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
             ) -> tuple[Tensor, Tensor]:
    """DPO (Rafailov et al., arXiv 2305.18290), sigmoid form, per pair [P]:
    -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))).

    Inputs are sequence logprobs (see `sequence_logprob`). Returns (loss [P], margin [P]) where the margin is the
    implicit reward difference beta * (...) (detached, for logging: `pair_accuracy`). At beta -> 0, or for a
    pair whose two log ratios are equal (e.g. identical completions), the loss is log 2.
    """
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin), margin.detach()


@DPO_LOSSES.register("ipo")
def ipo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
             ) -> tuple[Tensor, Tensor]:
    """IPO (Azar et al., arXiv 2310.12036, eq. 17) per pair [P]: (h - 1 / (2 beta))^2 with
    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)).

    A squared loss regresses the log-ratio gap to the fixed target 1 / (2 beta) instead of pushing it to infinity
    as DPO's log-sigmoid does on pairs it already ranks right, which is IPO's remedy for DPO overfitting
    deterministic preferences. The paper's h sums token logprobs; TRL's IPO averages them
    (`algo.dpo_length_norm=true`). The margin returned is DPO's implicit reward gap beta * h (so
    `dpo/accuracy` means the same under both losses).
    """
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    return (h - 1.0 / (2.0 * beta)) ** 2, (beta * h).detach()


@REWARD_MODEL_LOSSES.register("bradley_terry")
def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Bradley-Terry (Ouyang et al., arXiv 2203.02155, eq. 1) per pair [P]: -log sigmoid(r(y_w) - r(y_l)), the
    negative log-likelihood that the chosen completion wins under P(w > l) = sigmoid(r_w - r_l). Only score
    differences are learnt, so a trained RM's absolute level is arbitrary (`reward.models[i].normalize` exists
    for that). Returns (loss [P], margin r_w - r_l [P], detached: see `pair_accuracy`)."""
    margin = chosen - rejected
    return -torch.nn.functional.logsigmoid(margin), margin.detach()


def pair_accuracy(margin: Tensor) -> Tensor:
    """The share of pairs ranked right from their margins [P] (chosen minus rejected, in any of the losses above):
    1 for a positive margin, 0 for a negative one, and 1/2 for a tie, the coin flip a ranking that cannot tell the
    two apart stands for (AUC's convention). So DPO's first step, where the policy is the reference and every
    margin is exactly 0, reads 0.5, not 0."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
