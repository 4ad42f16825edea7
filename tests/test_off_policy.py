"""Off-policy corrections (TIS, MIS) and AReaL's decoupled PPO loss: pure functions against hand-computed values.

Every case builds logprobs from chosen ratios: behaviour = -1, proximal = -1 + log(rho), so rho is exact."""

import math

import pytest
import torch
from helpers import close

from rlpost.algos import OFF_POLICY_CORRECTIONS, decoupled_ppo_loss, importance_ratio_stats
from rlpost.config import ConfigError


def logprobs_for(ratios):
    """(proximal, behaviour) logprobs [1, T] whose ratio exp(proximal - behaviour) is `ratios`."""
    behaviour = torch.full((1, len(ratios)), -1.0)
    return behaviour + torch.log(torch.tensor([ratios])), behaviour


def test_registry_names_and_unknown():
    assert OFF_POLICY_CORRECTIONS.names() == ["mis", "none", "tis"]
    with pytest.raises(ConfigError, match=r"algo.off_policy_correction='is'"):
        OFF_POLICY_CORRECTIONS.get("is")


def test_tis_truncates_at_the_cap():
    prox, behav = logprobs_for([0.5, 1.0, 3.0, 10.0])
    weight, keep = OFF_POLICY_CORRECTIONS.get("tis")(prox, behav, torch.ones(1, 4), 2.0)
    close(weight, [[0.5, 1.0, 2.0, 2.0]])  # min(rho, 2)
    assert keep.tolist() == [[True, True, True, True]]


def test_mis_drops_tokens_above_the_cap():
    prox, behav = logprobs_for([0.5, 2.0, 3.0, 10.0])
    weight, keep = OFF_POLICY_CORRECTIONS.get("mis")(prox, behav, torch.ones(1, 4), 2.0)
    close(weight, [[0.5, 2.0, 0.0, 0.0]])  # rho where rho <= 2 (the cap itself is kept), else 0
    assert keep.tolist() == [[True, True, False, False]]


def test_none_is_weight_one():
    prox, behav = logprobs_for([0.5, 10.0])
    weight, keep = OFF_POLICY_CORRECTIONS.get("none")(prox, behav, torch.tensor([[1.0, 0.0]]), 2.0)
    close(weight, [[1.0, 1.0]])
    assert keep.tolist() == [[True, False]]


def test_masked_garbage_gives_ratio_one_and_stays_masked():
    # A padding position with a behaviour logprob of -inf would be an inf ratio; masked, it is 1 and dropped.
    prox = torch.tensor([[-1.0, 0.0]])
    behav = torch.tensor([[-1.0, -math.inf]])
    mask = torch.tensor([[1.0, 0.0]])
    for name in ("tis", "mis"):
        weight, keep = OFF_POLICY_CORRECTIONS.get(name)(prox, behav, mask, 2.0)
        assert torch.isfinite(weight).all() and keep.tolist() == [[True, False]]


def test_weights_are_detached():
    prox, behav = logprobs_for([1.5])
    prox.requires_grad_(True)
    weight, _ = OFF_POLICY_CORRECTIONS.get("tis")(prox, behav, torch.ones(1, 1), 2.0)
    assert not weight.requires_grad


def test_decoupled_ppo_hand_values():
    # Token 1: rho = 1.5 (kept by mis at cap 2), r = pi/pi_prox = 1.1 inside [0.8, 1.2], A = 2:
    #   loss = -1.5 * 1.1 * 2 = -3.3.
    # Token 2: rho = 0.5, r = 1.5 clipped to 1.2, A = 1: loss = -0.5 * 1.2 * 1 = -0.6.
    # Token 3: rho = 4 > cap: mis drops it (0); tis weighs it 2: r = 1, A = 1 -> -2 * 1 = -2.
    prox, behav = logprobs_for([1.5, 0.5, 4.0])
    logprobs = prox + torch.log(torch.tensor([[1.1, 1.5, 1.0]]))
    adv = torch.tensor([[2.0, 1.0, 1.0]])
    mask = torch.ones(1, 3)
    loss, frac = decoupled_ppo_loss(logprobs, prox, behav, adv, mask, 0.2, 0.2, cap=2.0, correction="mis")
    close(loss, [[-3.3, -0.6, 0.0]])
    close(frac, 0.5)  # of the two kept tokens, token 2 was clipped
    loss, frac = decoupled_ppo_loss(logprobs, prox, behav, adv, mask, 0.2, 0.2, cap=2.0, correction="tis")
    close(loss, [[-3.3, -0.6, -2.0]])
    close(frac, 1 / 3)


def test_decoupled_ppo_gradient_is_weighted_policy_gradient():
    # Unclipped token (r = 1): d loss / d logprob = -rho * r * A = -1.5 * 1 * 2 = -3.
    prox, behav = logprobs_for([1.5])
    logprobs = prox.clone().requires_grad_(True)
    loss, _ = decoupled_ppo_loss(logprobs, prox, behav, torch.tensor([2.0]), torch.ones(1, 1), 0.2, 0.2,
                                 cap=2.0, correction="tis")
    loss.sum().backward()
    close(logprobs.grad, [[-3.0]])


def test_decoupled_ppo_with_none_is_the_plain_clipped_loss():
    from rlpost.algos import clipped_policy_loss

    prox, behav = logprobs_for([3.0, 0.2])
    logprobs = prox + torch.tensor([[0.3, -0.1]])
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    got = decoupled_ppo_loss(logprobs, prox, behav, adv, mask, 0.2, 0.2, correction="none")
    want = clipped_policy_loss(logprobs, prox, adv, mask, 0.2, 0.2)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_ratio_stats():
    # Masked-in ratios 0.5, 1.0, 4.5 (the 100 is masked): mean 2.0, max 4.5, one of three above cap 2.
    prox, behav = logprobs_for([0.5, 1.0, 4.5, 100.0])
    stats = importance_ratio_stats(prox, behav, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 2.0)
    close(stats["ratio_mean"], 2.0)
    close(stats["ratio_max"], 4.5)
    close(stats["capped_frac"], 1 / 3)
    empty = importance_ratio_stats(prox, behav, torch.zeros(1, 4), 2.0)
    assert all(float(v) == 0.0 for v in empty.values())
