"""Policy, value and DPO losses, reward shaping, the KL controller, DPO pairs, dynamic sampling and the registries:
pure functions against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from helpers import close

from rlpost.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    PAIR_SELECTORS,
    POLICY_LOSSES,
    Registry,
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    dpo_loss,
    entropy_from_logits,
    grpo_advantages,
    gspo_policy_loss,
    masked_mean,
    overlong_penalty,
    repeat_to,
    select_pairs,
    seq_mean_token_mean,
    sequence_logprob,
    token_level_rewards,
)
from rlpost.algos.dynamic_sampling import informative_groups, refill_size, tied_samples, untied_subset
from rlpost.config import ConfigError

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


def test_dual_clip_caps_the_loss_of_negative_advantages():
    # A = -1, clip_c 3: ratio 5 -> the PPO loss max(5 * 1, 1.2 * 1) = 5 is capped at 3; ratio 2 -> 2 (under the cap)
    # A = +1, ratio 5: dual clip never applies to positive advantages; PPO clipping gives -1.2
    loss, frac = run_clipped([5.0, 2.0, 5.0], [-1.0, -1.0, 1.0], clip_low=0.2, clip_high=0.2)
    close(loss, [[5.0, 2.0, -1.2]])
    old = torch.full((1, 3), -1.0)
    logprobs = old + torch.log(torch.tensor([[5.0, 2.0, 5.0]]))
    loss, frac = clipped_policy_loss(logprobs, old, torch.tensor([[-1.0, -1.0, 1.0]]), torch.ones(1, 3), 0.2, 0.2,
                                     clip_c=3.0)
    close(loss, [[3.0, 2.0, -1.2]])
    close(frac, 2 / 3)  # the capped token and the clipped positive one


def test_gspo_sequence_ratio_and_clipping():
    # row 0: token log ratios [.2, .4] -> s = exp(.3) = 1.35 > 1 + .2 with A = 1: clipped to 1.2 on every token
    # row 1: token log ratios [.1, -.1] (+ a padding token) -> s = exp(0) = 1, inside: loss -A = 2 per token
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -5.0]])
    logprobs = old + torch.tensor([[0.2, 0.4, 0.0], [0.1, -0.1, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    loss, frac = gspo_policy_loss(logprobs, old, torch.tensor([1.0, -2.0]), mask, 0.2, 0.2)
    close(loss, [[-1.2, -1.2, 0.0], [2.0, 2.0, 0.0]])
    close(frac, 2 / 4)


def test_gspo_gradient_is_the_sequence_ratio_gradient():
    # Unclipped, sum over sequences of mean over tokens of GSPO-token's loss has the gradient of -s_i * A_i with
    # s_i = exp(mean_t log(pi / pi_old)): the paper's sequence-level objective.
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -1.1, -3.0]])
    delta = torch.tensor([[0.05, -0.02, 0.03], [0.01, 0.04, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([0.7, -1.3])
    ours = (old + delta).requires_grad_(True)
    loss, _ = gspo_policy_loss(ours, old, adv, mask, 10.0, 10.0)
    seq_mean_token_mean(loss, mask, num_seqs=1).backward()
    direct = (old + delta).requires_grad_(True)
    s = torch.exp(masked_mean(direct - old, mask, dim=-1))
    (-(s * adv).sum()).backward()
    close(ours.grad, direct.grad)


def test_clipped_value_loss():
    # V 1, old .5, R 2, clip .2: plain (1 - 2)^2 = 1; clipped V .7 -> (.7 - 2)^2 = 1.69, larger -> .5 * 1.69
    # V .6, old .5, R 0: inside the clip, both .36 -> .18, not counted as clipped; masked token -> 0
    values = torch.tensor([[1.0, 0.6, 5.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, frac = clipped_value_loss(values, old, returns, mask, 0.2)
    close(loss, [[0.5 * 1.69, 0.18, 0.0]])
    close(frac, 0.5)
    loss, frac = clipped_value_loss(values, old, returns, mask, 0.0)
    close(loss, [[0.5, 0.18, 0.0]])
    close(frac, 0.0)


def test_sequence_logprob():
    logprobs = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    close(sequence_logprob(logprobs, mask), [-3.0, -1.5])
    close(sequence_logprob(logprobs, mask, length_normalize=True), [-1.5, -0.5])


def test_dpo_loss_hand_value():
    # margin = .5 * ((-1 - -2) - (-3 - -2)) = .5 * 2 = 1 -> loss = -log sigmoid(1) = log(1 + e^-1)
    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                            beta=0.5)
    close(loss, [math.log(1 + math.exp(-1))])
    close(margin, [1.0])


def test_dpo_loss_beta_to_zero_and_identical_pairs_is_log2():
    chosen, rejected = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -0.5])
    ref_c, ref_r = torch.tensor([-2.0, -2.0]), torch.tensor([-1.0, -6.0])
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=1e-8)
    close(loss, [math.log(2)] * 2)
    # identical completions: the same sequence logprob on both sides, for any beta, and no net gradient
    seq = torch.tensor([-2.5, -0.3], requires_grad=True)
    loss, margin = dpo_loss(seq, seq, ref_c, ref_c, beta=3.0)
    close(loss, [math.log(2)] * 2)
    close(margin, [0.0, 0.0])
    loss.sum().backward()
    close(seq.grad, [0.0, 0.0])


def test_dpo_loss_gradient_raises_chosen_lowers_rejected():
    chosen, rejected = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)
    loss.sum().backward()
    # d/dm -log sigmoid(m) = -sigmoid(-m) = -1/2 at m = 0; dm/dchosen = beta, dm/drejected = -beta
    close(chosen.grad, [-0.05])
    close(rejected.grad, [0.05])


# ---- reward shaping and the KL controller ------------------------------------------------------------------------


def test_overlong_penalty():
    # max 10, buffer 4: free up to 6 tokens, then -(len - 6) / 4 * factor; a truncated completion (10) gets -factor
    close(overlong_penalty(torch.tensor([1, 6, 8, 10]), 10, 4), [0.0, 0.0, -0.5, -1.0])
    close(overlong_penalty(torch.tensor([8, 10]), 10, 4, factor=0.5), [-0.25, -0.5])
    close(overlong_penalty(torch.tensor([10]), 10, 0), [0.0])  # off


def test_token_level_rewards():
    # the score sits on the last token; a single-token completion holds it on token 0
    close(token_level_rewards(torch.tensor([1.0, 2.0]), torch.tensor([3, 1]), 3), [[0, 0, 1.0], [2.0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    close(token_level_rewards(torch.tensor([1.0, 2.0]), torch.tensor([3, 1]), 3, kl, kl_coef=0.5),
          [[-0.05, -0.1, 1.0 - 0.15], [2.0 - 0.25, 0, 0]])


def test_adaptive_kl_coef():
    # error = clip(KL / target - 1, -.2, .2); coef * (1 + error * n / horizon)
    assert adaptive_kl_coef(0.1, 9.0, 6.0, 10000, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 100, 10) == pytest.approx(0.1 * (1 + 0.1 * 10 / 100))
    assert adaptive_kl_coef(0.1, 0.0, 6.0, 100, 10) == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))
    assert adaptive_kl_coef(0.1, 50.0, 0.0, 100, 10) == 0.1  # fixed


# ---- pairs and dynamic sampling -------------------------------------------------------------------------------


def test_best_worst_pairs_skip_ties():
    rng = np.random.default_rng(0)
    # group 0: best index 1 (first of the two 1.0s), worst index 0; group 1 ties; group 2: best 0, worst 1
    pairs = select_pairs([0.0, 1.0, 0.5, 1.0, 0.3, 0.3, 0.3, 0.3, 2.0, -1.0, 0.0, 0.0], 4, "best_worst", rng)
    assert pairs == [(1, 0), (8, 9)]
    assert select_pairs([0.7, 0.7], 2, "best_worst", rng) == []


def test_other_pair_selectors_respect_order_and_ties():
    rng = np.random.default_rng(0)
    scores = [1.0, 0.0, 0.5, 1.0]
    for _ in range(20):
        chosen, rejected = PAIR_SELECTORS.get("best_random")(scores, rng)
        assert chosen == 0 and rejected in (1, 2)  # never the other 1.0: that would be a tie
        chosen, rejected = PAIR_SELECTORS.get("random")(scores, rng)
        assert scores[chosen] > scores[rejected]
    assert PAIR_SELECTORS.get("random")([2.0, 2.0], rng) is None
    assert PAIR_SELECTORS.get("best_random")([2.0, 2.0], rng) is None


def test_repeat_to():
    assert repeat_to([(0, 1), (2, 3)], 5) == [(0, 1), (2, 3), (0, 1), (2, 3), (0, 1)]
    assert repeat_to([(0, 1), (2, 3)], 1) == [(0, 1)]
    assert repeat_to([], 4) == []


def test_dynamic_sampling_helpers():
    assert informative_groups([1, 1, 0, 1, 2, 2, 2, 2, 0.5, 0.5], 2) == [False, True, False, False, False]
    assert refill_size(missing=3, sampled=8, kept=5, remaining=16) == 5  # ceil(3 * 8 / 5): the keep rate so far
    assert refill_size(missing=3, sampled=8, kept=5, remaining=2) == 2  # the cap wins
    assert refill_size(missing=8, sampled=8, kept=0, remaining=100) == 8  # nothing kept yet: as many again
    assert refill_size(missing=4, sampled=8, kept=4, remaining=0) == 0


def test_tied_group_helpers():
    assert tied_samples([1, 1, 0, 1, 2, 2], 2) == [True, True, False, False, True, True]
    # untied 1, 2, 5 (three) -> padded to 4 with the first tied one (0), order kept
    assert untied_subset([True, False, False, True, True, False], 2) == [0, 1, 2, 5]
    assert untied_subset([True, False, False, True], 2) == [1, 2]  # already a multiple: no filler
    assert untied_subset([True, True, True, True], 2) == [0, 1]  # all tied: one item per rank still runs
    assert untied_subset([False, False, False], 1) == [0, 1, 2]


# ---- registry and entropy ---------------------------------------------------------------------------------------


def test_registry_unknown_name_lists_choices():
    msg = r"^algo\.kl_estimator='k4' is not a known KL estimator; choose one of: k1, k2, k3$"
    with pytest.raises(ConfigError, match=msg):
        KL_ESTIMATORS.get("k4")
    with pytest.raises(ConfigError, match="seq_mean_token_mean, seq_mean_token_sum, token_mean"):
        LOSS_AGGREGATIONS.get("mean")
    assert ADVANTAGES.names() == ["dr_grpo", "gae", "grpo", "reinforce_pp", "rloo"]
    assert ADVANTAGES.get("grpo") is grpo_advantages
    with pytest.raises(ConfigError, match=r"^algo\.advantage='ppo' is not a known advantage estimator"):
        ADVANTAGES.traits("ppo")


def test_registry_register_and_duplicate():
    reg = Registry("thing", "x.thing")

    @reg.register("b")
    def b():
        return 2

    reg.register("a", cheap=True)(lambda: 1)
    assert reg.names() == ["a", "b"] and reg.get("b") is b
    assert reg.traits("a") == {"cheap": True} and reg.traits("b") == {}
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 3)


def test_entropy():
    close(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    # p = [1/4, 3/4] from logits [log 1, log 3] (+ a large offset, which logsumexp absorbs; float64 so that
    # 1000 + log 3 is itself represented exactly enough)
    logits = torch.tensor([0.0, math.log(3)], dtype=torch.float64) + 1000
    close(entropy_from_logits(logits), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    close(entropy_from_logits(torch.tensor([0.0, -1000.0])), 0.0)


def test_pair_accuracy_counts_a_tie_as_half():
    from rlpost.algos import pair_accuracy

    # right, wrong, tie, right: (1 + 0 + 0.5 + 1) / 4
    assert pair_accuracy(torch.tensor([0.3, -2.0, 0.0, 1e-6])).item() == pytest.approx(0.625)
    assert pair_accuracy(torch.zeros(5)).item() == 0.5  # policy == reference: no ranking at all
