"""rlpost.algos against values worked out by hand (the arithmetic is written out, not recomputed by the code)."""

import math

import pytest
import torch

from rlpost.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    Registry,
    clipped_policy_loss,
    entropy_from_logits,
    grpo_advantages,
    masked_mean,
    masked_sum,
    seq_mean_token_mean,
    seq_mean_token_sum,
    token_mean,
)
from rlpost.config import ConfigError


def close(actual, expected, atol=1e-5):
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---- advantages ---------------------------------------------------------------------------------------------


def test_grpo_std_normalized():
    # mean .25; deviations .75, -.25 x3; unbiased var = (.5625 + 3 * .0625) / 3 = .25 -> std .5
    close(grpo_advantages(torch.tensor([1.0, 0, 0, 0]), 4), [0.75 / 0.5, -0.25 / 0.5, -0.25 / 0.5, -0.25 / 0.5])


def test_grpo_no_std():
    close(grpo_advantages(torch.tensor([1.0, 0, 0, 0]), 4, std_normalize=False), [0.75, -0.25, -0.25, -0.25])


def test_grpo_two_groups():
    # group 2: [1, 1, 0, 0], mean .5, unbiased var = 4 * .25 / 3 = 1/3 -> +-.5 / sqrt(1/3)
    a = 0.5 / math.sqrt(1 / 3)
    adv = grpo_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0]), 4)
    close(adv, [1.5, -0.5, -0.5, -0.5, a, a, -a, -a])


def test_grpo_equal_rewards_are_exactly_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0])  # mean of three 0.1s is not exactly 0.1 in fp32
    adv = grpo_advantages(rewards, 3)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert torch.equal(grpo_advantages(torch.tensor([0.1, 0.1, 0.1]), 3, std_normalize=False), torch.zeros(3))
    assert torch.equal(grpo_advantages(torch.tensor([3.0, 5.0]), 1), torch.zeros(2))  # groups of one: no signal


def test_grpo_bad_n():
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.zeros(5), 4)


# ---- KL estimators ------------------------------------------------------------------------------------------

# log_ratio = ref - logprobs = [0, 1, -1]
LP = torch.tensor([-1.0, -2.0, -0.5])
REF = torch.tensor([-1.0, -1.0, -1.5])


def test_kl_k1():
    close(KL_ESTIMATORS.get("k1")(LP, REF), [0.0, -1.0, 1.0])


def test_kl_k2():
    close(KL_ESTIMATORS.get("k2")(LP, REF), [0.0, 0.5 * 1**2, 0.5 * (-1) ** 2])


def test_kl_k3():
    k3 = KL_ESTIMATORS.get("k3")(LP, REF)
    close(k3, [1 - 0 - 1, math.e - 1 - 1, math.exp(-1) + 1 - 1])
    assert k3[0] == 0 and (k3[1:] > 0).all()


def test_kl_k3_clamped_stays_finite():
    k3 = KL_ESTIMATORS.get("k3")(torch.tensor([-200.0, 0.0]), torch.tensor([0.0, -200.0]))  # log_ratio 200, -200
    close(k3, [math.exp(20) - 20 - 1, math.exp(-20) + 20 - 1], atol=1e-3 * math.exp(20))
    assert torch.isfinite(k3).all()


# ---- aggregation ------------------------------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("inf")]])  # the inf sits under the mask
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_token_mean():
    close(token_mean(PER_TOKEN, MASK), (1 + 2 + 4) / 3)
    close(token_mean(PER_TOKEN, MASK, num_tokens=10), (1 + 2 + 4) / 10)


def test_seq_mean_token_sum():
    close(seq_mean_token_sum(PER_TOKEN, MASK), ((1 + 2) + 4) / 2)
    close(seq_mean_token_sum(PER_TOKEN, MASK, num_seqs=4), ((1 + 2) + 4) / 4)


def test_seq_mean_token_mean():
    close(seq_mean_token_mean(PER_TOKEN, MASK), ((1 + 2) / 2 + 4 / 1) / 2)
    close(seq_mean_token_mean(PER_TOKEN, MASK, num_seqs=4), ((1 + 2) / 2 + 4 / 1) / 4)
    empty_row = torch.tensor([[1, 1, 0], [0, 0, 0]])
    close(seq_mean_token_mean(PER_TOKEN, empty_row), ((1 + 2) / 2 + 0) / 2)


def test_microbatches_with_global_normalizer_match_full_batch():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    full = (1 + 2 + 3 + 4 + 7 + 8 + 10) / 7
    close(token_mean(per_token, mask), full)
    # micro-batches of 2 rows each hold 4 and 3 tokens; dividing by the global 7 makes the pieces add up
    parts = [token_mean(per_token[i : i + 2], mask[i : i + 2], num_tokens=7) for i in (0, 2)]
    close(parts[0], (1 + 2 + 3 + 4) / 7)
    close(parts[1], (7 + 8 + 10) / 7)
    close(parts[0] + parts[1], full)
    # whereas averaging the micro-batches' own means does not: (10/4 + 25/3) / 2 != 35/7
    local = [token_mean(per_token[i : i + 2], mask[i : i + 2]) for i in (0, 2)]
    assert abs((local[0] + local[1]) / 2 - full) > 0.1
    # the same holds per sequence: 4 sequences in all
    seq_parts = [seq_mean_token_mean(per_token[i : i + 2], mask[i : i + 2], num_seqs=4) for i in (0, 2)]
    close(seq_parts[0] + seq_parts[1], seq_mean_token_mean(per_token, mask))


def test_masked_helpers():
    close(masked_sum(PER_TOKEN, MASK), 1 + 2 + 4)
    close(masked_mean(PER_TOKEN, MASK), 7 / 3)
    close(masked_mean(PER_TOKEN, MASK, dim=-1), [(1 + 2) / 2, 4 / 1])
    close(masked_mean(PER_TOKEN, torch.zeros(2, 3)), 0.0)  # empty mask -> 0, not NaN


# ---- clipped policy loss --------------------------------------------------------------------------------------


def run_clipped(ratios, advantages, mask=None, clip_low=0.2, clip_high=0.3):
    old = torch.full((1, len(ratios)), -1.0)
    logprobs = old + torch.log(torch.tensor([ratios]))
    mask = torch.ones(1, len(ratios)) if mask is None else torch.tensor([mask])
    return clipped_policy_loss(logprobs, old, torch.tensor([advantages]), mask, clip_low, clip_high)


def test_clipped_inside_range():
    loss, frac = run_clipped([1.1, 0.9], [2.0, -1.0])
    close(loss, [[-1.1 * 2.0, -0.9 * -1.0]])
    close(frac, 0.0)


def test_clipped_above_with_positive_advantage():
    loss, frac = run_clipped([1.5], [1.0])  # clipped to 1 + .3
    close(loss, [[-1.3 * 1.0]])
    close(frac, 1.0)


def test_clipped_below_with_negative_advantage():
    loss, frac = run_clipped([0.5], [-1.0])  # clipped to 1 - .2
    close(loss, [[-0.8 * -1.0]])
    close(frac, 1.0)


def test_clipped_is_pessimistic_on_the_other_side():
    # ratio above 1 + clip_high with A < 0 (or below 1 - clip_low with A > 0): min keeps the unclipped term
    loss, frac = run_clipped([1.5, 0.5], [-1.0, 1.0])
    close(loss, [[-1.5 * -1.0, -0.5 * 1.0]])
    close(frac, 0.0)


def test_clipped_asymmetric():
    # clip range [1 - .1, 1 + .4] = [.9, 1.4]: ratio 1.3 passes with A > 0; ratio .85 with A < 0 is clipped to .9
    loss, frac = run_clipped([1.3, 0.85], [1.0, -1.0], clip_low=0.1, clip_high=0.4)
    close(loss, [[-1.3 * 1.0, -0.9 * -1.0]])
    close(frac, 1 / 2)


def test_clipped_mask_and_clip_fraction():
    # inside | clipped high | clipped low | unclipped (pessimistic) | masked (would be clipped)
    loss, frac = run_clipped([1.1, 1.5, 0.5, 1.5, 2.0], [1.0, 1.0, -1.0, -1.0, 1.0], mask=[1, 1, 1, 1, 0])
    close(loss, [[-1.1, -1.3, 0.8, 1.5, 0.0]])
    close(frac, 2 / 4)


def test_clipped_masked_garbage_does_not_leak():
    logprobs = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1e4]])  # padding position: ratio would be exp(1e4) = inf
    loss, _ = clipped_policy_loss(logprobs, old, torch.tensor([1.0]), torch.tensor([[1, 0]]), 0.2, 0.2)
    loss.sum().backward()
    close(loss, [[-1.0, 0.0]])
    close(logprobs.grad, [[-1.0, 0.0]])


def test_clipped_gradient_at_ratio_one_is_minus_advantage():
    # d/dlogp [-ratio * A] = -ratio * A = -A at ratio 1; per-sequence A broadcast over tokens, masked tokens get 0
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.2]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([0.5, -2.0])
    loss, frac = POLICY_LOSSES.get("clipped")(logprobs, logprobs.detach(), advantages, mask, 0.2, 0.2)
    loss.sum().backward()
    close(logprobs.grad, [[-0.5, -0.5, -0.5], [2.0, 2.0, 0.0]])
    close(frac, 0.0)


# ---- registry and entropy ---------------------------------------------------------------------------------------


def test_registry_unknown_name_lists_choices():
    msg = r"^algo\.kl_estimator='k4' is not a known KL estimator; choose one of: k1, k2, k3$"
    with pytest.raises(ConfigError, match=msg):
        KL_ESTIMATORS.get("k4")
    with pytest.raises(ConfigError, match="seq_mean_token_mean, seq_mean_token_sum, token_mean"):
        LOSS_AGGREGATIONS.get("mean")
    assert "grpo" in ADVANTAGES and "ppo" not in ADVANTAGES
    assert ADVANTAGES.get("grpo") is grpo_advantages


def test_registry_register_and_duplicate():
    reg = Registry("thing", "x.thing")

    @reg.register("b")
    def b():
        return 2

    reg.register("a")(lambda: 1)
    assert reg.names() == ["a", "b"] and reg.get("b") is b
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 3)


def test_entropy():
    close(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    # p = [1/4, 3/4] from logits [log 1, log 3] (+ a large offset, which logsumexp absorbs; float64 so that
    # 1000 + log 3 is itself represented exactly enough)
    logits = torch.tensor([0.0, math.log(3)], dtype=torch.float64) + 1000
    close(entropy_from_logits(logits), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    close(entropy_from_logits(torch.tensor([0.0, -1000.0])), 0.0)
