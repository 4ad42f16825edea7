"""rlpost.algos against values worked out by hand (the arithmetic is written out, not recomputed by the code)."""

import math

import pytest
import torch
from helpers import close

from rlpost.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    gae_advantages,
    grpo_advantages,
    masked_mean,
    masked_sum,
    reinforce_pp_advantages,
    seq_mean_token_mean,
    seq_mean_token_sum,
    token_mean,
)
from rlpost.config import AlgoConfig

# ---- advantages ---------------------------------------------------------------------------------------------


def outcome(scores, lengths=None):
    """Token rewards [N, T] holding each score on its sequence's last token, and the mask (lengths default 1)."""
    lengths = lengths or [1] * len(scores)
    rewards = torch.zeros(len(scores), max(lengths))
    mask = torch.zeros(len(scores), max(lengths))
    for i, (score, n) in enumerate(zip(scores, lengths, strict=True)):
        rewards[i, n - 1] = score
        mask[i, :n] = 1
    return rewards, mask


def seq_adv(name, scores, group_size, **cfg):
    """A sequence-level estimator's advantage per sequence (single-token sequences)."""
    rewards, mask = outcome(scores)
    adv, returns = ADVANTAGES.get(name)(rewards, mask, AlgoConfig(group_size=group_size, **cfg))
    assert returns is None
    return adv[:, 0]


def test_grpo_std_normalized():
    # mean .25; deviations .75, -.25 x3; unbiased var = (.5625 + 3 * .0625) / 3 = .25 -> std .5
    close(seq_adv("grpo", [1.0, 0, 0, 0], 4), [0.75 / 0.5, -0.25 / 0.5, -0.25 / 0.5, -0.25 / 0.5])


def test_grpo_no_std():
    close(seq_adv("grpo", [1.0, 0, 0, 0], 4, std_normalize=False), [0.75, -0.25, -0.25, -0.25])


def test_grpo_two_groups():
    # group 2: [1, 1, 0, 0], mean .5, unbiased var = 4 * .25 / 3 = 1/3 -> +-.5 / sqrt(1/3)
    a = 0.5 / math.sqrt(1 / 3)
    close(seq_adv("grpo", [1.0, 0, 0, 0, 1, 1, 0, 0], 4), [1.5, -0.5, -0.5, -0.5, a, a, -a, -a])


def test_grpo_broadcasts_over_tokens_and_masks_padding():
    # lengths 3, 1, 2, 1: every token of a completion gets its advantage, padding gets exactly 0
    rewards, mask = outcome([1.0, 0, 0, 0], [3, 1, 2, 1])
    adv, _ = grpo_advantages(rewards, mask, AlgoConfig(group_size=4))
    close(adv, [[1.5, 1.5, 1.5], [-0.5, 0, 0], [-0.5, -0.5, 0], [-0.5, 0, 0]])


def test_grpo_scores_a_sequence_by_its_summed_token_rewards():
    # a KL penalty in the reward changes the sequence's score: [.9 - .1, -.2] -> scores .8 and -.2, mean .3
    rewards = torch.tensor([[-0.1, 0.9], [-0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv, _ = grpo_advantages(rewards, mask, AlgoConfig(group_size=2, std_normalize=False))
    close(adv, [[0.5, 0.5], [-0.5, 0.0]])


def test_grpo_equal_rewards_are_exactly_zero():
    scores = [0.1, 0.1, 0.1, 1.0, 0.0, 0.0]  # mean of three 0.1s is not exactly 0.1 in fp32
    assert torch.equal(seq_adv("grpo", scores, 3)[:3], torch.zeros(3))
    assert torch.equal(seq_adv("grpo", [0.1, 0.1, 0.1], 3, std_normalize=False), torch.zeros(3))
    assert torch.equal(seq_adv("grpo", [3.0, 5.0], 1), torch.zeros(2))  # groups of one: no signal


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_sum_to_zero_per_group(name):
    scores = torch.rand(6 * 5, generator=torch.Generator().manual_seed(0)).tolist()
    adv = seq_adv(name, scores, 5).view(6, 5)
    close(adv.sum(dim=1), torch.zeros(6))


def test_grpo_bad_n():
    rewards, mask = outcome([0.0] * 5)
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(rewards, mask, AlgoConfig(group_size=4))


def test_dr_grpo_never_divides_by_std():
    for std_normalize in (True, False):
        close(seq_adv("dr_grpo", [1.0, 0, 0, 0], 4, std_normalize=std_normalize), [0.75, -0.25, -0.25, -0.25])
    assert torch.equal(seq_adv("dr_grpo", [0.1, 0.1, 0.1], 3), torch.zeros(3))


def test_rloo_hand_values():
    # A_0 = 1 - mean(0, 0, 0) = 1;  A_1 = 0 - mean(1, 0, 0) = -1/3
    close(seq_adv("rloo", [1.0, 0, 0, 0], 4), [1.0, -1 / 3, -1 / 3, -1 / 3])
    # [2, 1, 0]: A = [2 - .5, 1 - 1, 0 - 1.5]
    close(seq_adv("rloo", [2.0, 1.0, 0.0], 3), [1.5, 0.0, -1.5])
    assert torch.equal(seq_adv("rloo", [0.3, 0.3], 2), torch.zeros(2))


def test_rloo_baseline_excludes_the_sample_itself():
    # raising r_0 by d raises A_0 by exactly d (its baseline does not move) and lowers the others by d / (n - 1)
    before = seq_adv("rloo", [0.2, 0.5, 0.9, 0.4], 4)
    after = seq_adv("rloo", [1.2, 0.5, 0.9, 0.4], 4)
    close(after - before, [1.0, -1 / 3, -1 / 3, -1 / 3])


def test_rloo_needs_two_samples():
    rewards, mask = outcome([1.0, 0.0])
    with pytest.raises(ValueError, match="group_size >= 2"):
        ADVANTAGES.get("rloo")(rewards, mask, AlgoConfig(group_size=1))


def test_reinforce_pp_global_normalisation():
    # token rewards (a score on the last token, a penalty on another): row 0 [-.1, .9], row 1 [.5] (+ padding)
    rewards = torch.tensor([[-0.1, 0.9], [0.5, 7.0]])  # the 7 sits on padding and must not count
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # gamma 1: returns [-.1 + .9, .9] = [.8, .9] and [.5]; over the batch's 3 tokens mean 2.2 / 3,
    # unbiased var ((.8 - m)^2 + (.9 - m)^2 + (.5 - m)^2) / 2
    m = 2.2 / 3
    std = math.sqrt(((0.8 - m) ** 2 + (0.9 - m) ** 2 + (0.5 - m) ** 2) / 2)
    adv, returns = reinforce_pp_advantages(rewards, mask, AlgoConfig(gamma=1.0))
    assert returns is None
    close(adv, [[(0.8 - m) / std, (0.9 - m) / std], [(0.5 - m) / std, 0.0]])
    # gamma .5: returns [-.1 + .5 * .9, .9] = [.35, .9] and [.5]; only centred without std_normalize
    adv, _ = reinforce_pp_advantages(rewards, mask, AlgoConfig(gamma=0.5, std_normalize=False))
    m = (0.35 + 0.9 + 0.5) / 3
    close(adv, [[0.35 - m, 0.9 - m], [0.5 - m, 0.0]])
    # one sample per prompt is fine (no groups), and an all-equal batch gives exactly 0
    adv, _ = reinforce_pp_advantages(*outcome([1.0, 1.0, 1.0]), AlgoConfig(group_size=1))
    assert torch.equal(adv, torch.zeros(3, 1))


def test_gae_hand_values():
    # gamma 1, lam .5; r = [0, 0, 1], V = [.5, .6, .7], V after the end = 0
    # deltas: t2 = 1 + 0 - .7 = .3, t1 = 0 + .7 - .6 = .1, t0 = 0 + .6 - .5 = .1
    # A2 = .3, A1 = .1 + .5 * .3 = .25, A0 = .1 + .5 * .25 = .225; returns = A + V
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.4, 9.0, 9.0]])  # row 1 is a single-token completion
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, returns = gae_advantages(rewards, mask, AlgoConfig(gamma=1.0, lam=0.5, std_normalize=False), values)
    close(adv, [[0.225, 0.25, 0.3], [2.0 - 0.4, 0.0, 0.0]])
    close(returns, [[0.725, 0.85, 1.0], [2.0, 0.0, 0.0]])


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] + [0.0] * 4])
    adv, returns = gae_advantages(rewards, mask, AlgoConfig(gamma=1.0, lam=1.0, std_normalize=False), values)
    # return-to-go by hand: reversed cumulative sum of the masked rewards
    togo = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1])
    close(adv, (togo - values) * mask)
    close(returns, togo * mask)


def test_gae_whitening_leaves_returns_alone():
    rewards, mask = outcome([1.0, 0.0, 0.5], [2, 3, 1])
    values = torch.full(mask.shape, 0.25)
    raw, raw_returns = gae_advantages(rewards, mask, AlgoConfig(std_normalize=False), values)
    adv, returns = gae_advantages(rewards, mask, AlgoConfig(std_normalize=True), values)
    close(returns, raw_returns)
    keep = mask.bool()
    close(adv[keep].mean(), 0.0)
    close(adv[keep].std(), 1.0, atol=1e-4)
    close(adv[keep], (raw[keep] - raw[keep].mean()) / (raw[keep].std() + 1e-6))
    assert torch.equal(adv[~keep], torch.zeros(int((~keep).sum())))


def test_gae_needs_values():
    with pytest.raises(ValueError, match="values"):
        gae_advantages(*outcome([1.0]), AlgoConfig())


def test_advantage_traits():
    assert ADVANTAGES.traits("gae") == {"needs_values": True}
    assert ADVANTAGES.traits("rloo") == {"group_baseline": True}
    assert ADVANTAGES.traits("reinforce_pp") == {}


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
