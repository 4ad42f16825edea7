"""Pure pieces of the driver's step: dealing mini-batches, shuffling, and the experience phase's item building."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlpost.config import AlgoConfig
from rlpost.experience import TrainItem, padded, pg_items, ragged
from rlpost.logprobs import pack, unpack
from rlpost.rollout.engine import Sample
from rlpost.trainer import deal_minibatches, shuffled


def item(n_completion: int, tag: int, in_loss: bool = True) -> TrainItem:
    return TrainItem(prompt_ids=[tag], completion_ids=[0] * n_completion, rollout_logprobs=[],
                     advantages=[float(tag)] * n_completion, in_loss=in_loss)


def tags(items: list[TrainItem]) -> list[int]:
    return [it.prompt_ids[0] for it in items]


def test_deal_minibatches_shapes_and_global_counts() -> None:
    items = [item(n, i) for i, n in enumerate([1, 2, 3, 4, 5, 6, 7, 8])]
    per_rank = deal_minibatches(items, num_minibatches=2, num_ranks=2)
    assert len(per_rank) == 2 and all(len(mbs) == 2 for mbs in per_rank)
    # mini-batch 0 = items 0..3 (completion tokens 1+2+3+4 = 10), rank 0 gets 0,1 and rank 1 gets 2,3
    assert tags(per_rank[0][0].items) == [0, 1]
    assert tags(per_rank[1][0].items) == [2, 3]
    assert per_rank[0][0].global_tokens == per_rank[1][0].global_tokens == 10
    # mini-batch 1 = items 4..7 (5+6+7+8 = 26 tokens)
    assert tags(per_rank[1][1].items) == [6, 7]
    assert per_rank[0][1].global_tokens == 26 and per_rank[0][1].global_seqs == 4
    # every item is dealt exactly once
    assert sorted(t for mbs in per_rank for mb in mbs for t in tags(mb.items)) == list(range(8))


def test_deal_minibatches_counts_only_items_in_the_loss() -> None:
    # item 1 (2 tokens) is a masked truncated completion: dealt (it is packed), counted nowhere
    items = [item(1, 0), item(2, 1, in_loss=False), item(3, 2), item(4, 3)]
    (mb,), (mb1,) = deal_minibatches(items, num_minibatches=1, num_ranks=2)
    assert tags(mb.items) == [0, 1] and tags(mb1.items) == [2, 3]
    assert mb.global_tokens == 1 + 3 + 4 and mb.global_seqs == 3


def test_deal_minibatches_skips_tied_items_but_counts_them() -> None:
    # mini-batch 0 = items 0..3, of which 1 and 2 are tied: ranks get 0 and 3; the counts still hold all four
    items = [item(n, i) for i, n in enumerate([1, 2, 3, 4, 5, 6, 7, 8])]
    for i in (1, 2, 4, 5, 6):
        items[i].tied = True
    per_rank = deal_minibatches(items, num_minibatches=2, num_ranks=2)
    assert tags(per_rank[0][0].items) == [0] and tags(per_rank[1][0].items) == [3]
    assert per_rank[0][0].global_tokens == 10 and per_rank[0][0].global_seqs == 4
    # mini-batch 1 = items 4..7, one untied (7): the first tied one (4) evens the shares out
    assert tags(per_rank[0][1].items) == [4] and tags(per_rank[1][1].items) == [7]
    assert per_rank[1][1].global_tokens == 26


def test_shuffled_keeps_units_together() -> None:
    items = [item(1, i) for i in range(8)]
    rng = np.random.default_rng(0)
    pairs = tags(shuffled(items, 2, rng))
    assert sorted(pairs) == list(range(8)) and pairs != list(range(8))
    assert all(pairs[k] % 2 == 0 and pairs[k + 1] == pairs[k] + 1 for k in range(0, 8, 2))
    # unit 1 is a plain permutation, the one the step used before DPO existed
    assert tags(shuffled(items, 1, np.random.default_rng([0, 3]))) == \
        np.random.default_rng([0, 3]).permutation(8).tolist()


def test_padded_and_ragged_round_trip() -> None:
    rows = [[1.0, 2.0, 3.0], [4.0], [5.0, 6.0]]
    values, mask = padded(rows)
    assert torch.equal(values, torch.tensor([[1.0, 2.0, 3.0], [4.0, 0, 0], [5.0, 6.0, 0]]))
    assert torch.equal(mask, torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0]]))
    assert ragged(values, [3, 1, 2]) == rows


def sample(n: int, finish: str = "stop") -> Sample:
    return Sample(prompt_ids=[1, 2], completion_ids=list(range(n)), logprobs=[-1.0] * n, finish_reason=finish)


def test_pg_items_grpo_with_truncation_masking() -> None:
    # one group of 4: scores [1, 0, 0, 0] -> GRPO advantages [1.5, -.5, -.5, -.5], one per completion token;
    # sample 2 was cut at the length limit and, with mask_truncated, leaves the loss
    samples = [sample(2), sample(1), sample(3, "length"), sample(1)]
    algo = AlgoConfig(group_size=4, mask_truncated=True)
    items, metrics = pg_items(samples, torch.tensor([1.0, 0.0, 0.0, 0.0]), algo, kl_coef=0.0)
    for it, expected in zip(items, [[1.5, 1.5], [-0.5], [-0.5] * 3, [-0.5]], strict=True):
        assert it.advantages == pytest.approx(expected, abs=1e-5)  # std + 1e-6
    assert [it.in_loss for it in items] == [True, True, False, True]
    assert metrics["batch/masked_truncated_frac"] == 0.25
    assert items[0].old_logprobs is None and items[0].ref_logprobs is None and items[0].returns is None


def test_pg_items_kl_penalty_in_the_reward() -> None:
    # k1 per token = old - ref; reward mode subtracts kl_coef * k1 from each token's reward before the estimator.
    # seq 0: score 1, k1 [.5, .5] -> token rewards [-.05, .95], sum .9; seq 1: score 0, k1 [0] -> 0.
    # GRPO without std: mean .45 -> advantages .45 and -.45. kl/sequence = mean(1.0, 0.0) = .5
    samples = [sample(2), sample(1)]
    old, ref = [[-1.0, -1.0], [-2.0]], [[-1.5, -1.5], [-2.0]]
    algo = AlgoConfig(group_size=2, std_normalize=False, kl_mode="reward", kl_estimator="k1")
    items, metrics = pg_items(samples, torch.tensor([1.0, 0.0]), algo, 0.1, ref_logprobs=ref, old_logprobs=old)
    assert metrics["kl/sequence"] == pytest.approx(0.5)
    assert items[0].advantages == pytest.approx([0.45, 0.45]) and items[1].advantages == pytest.approx([-0.45])
    assert items[0].old_logprobs == old[0] and items[1].ref_logprobs == ref[1]
    # in loss mode the KL is measured but leaves the rewards alone
    items, _ = pg_items(samples, torch.tensor([1.0, 0.0]), AlgoConfig(group_size=2, std_normalize=False,
                        kl_mode="loss", kl_estimator="k1"), 0.1, ref_logprobs=ref, old_logprobs=old)
    assert items[0].advantages == pytest.approx([0.5, 0.5])


def test_pg_items_marks_tied_groups_only_when_asked() -> None:
    samples = [sample(1), sample(1), sample(2), sample(2)]
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0])  # group 0 ties, group 1 does not
    items, _ = pg_items(samples, scores, AlgoConfig(group_size=2, skip_tied_groups=True), 0.0)
    assert [it.tied for it in items] == [True, True, False, False]
    assert items[0].advantages == [0.0]  # which is why skipping it changes no gradient
    items, _ = pg_items(samples, scores, AlgoConfig(group_size=2), 0.0)
    assert not any(it.tied for it in items)


def test_pg_items_gae_returns_for_the_critic() -> None:
    # gamma = lam = 1, no whitening: A_t = return - V_t, returns = the score on every token
    samples = [sample(2), sample(1)]
    values = [[0.25, 0.5], [0.75]]
    algo = AlgoConfig(group_size=1, advantage="gae", gamma=1.0, lam=1.0, std_normalize=False)
    items, _ = pg_items(samples, torch.tensor([1.0, 0.0]), algo, 0.0, values=values)
    assert items[0].advantages == pytest.approx([0.75, 0.5]) and items[1].advantages == pytest.approx([-0.75])
    assert items[0].returns == pytest.approx([1.0, 1.0]) and items[1].returns == pytest.approx([0.0])
    assert items[0].values == values[0]


def test_pack_keeps_positions_from_the_shortest_prompt_on() -> None:
    # prompts of 3 and 2 tokens: position 1 (the short prompt's last token) is the first that predicts a completion
    # token, so per-token tensors start there: width 5, 5 - 1 - 1 = 3 columns, targets = input_ids[:, 2:]
    batch = pack([[11, 12, 13], [21, 22]], [[14, 15], [23, 24, 25]], pad_id=0)
    assert batch.start == 1
    assert batch.input_ids.tolist() == [[11, 12, 13, 14, 15], [21, 22, 23, 24, 25]]
    assert batch.targets.tolist() == [[13, 14, 15], [23, 24, 25]]
    assert batch.completion_mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert unpack(batch.targets.float(), batch.completion_mask) == [[14.0, 15.0], [23.0, 24.0, 25.0]]
    # padding after the shorter sequence is masked out
    batch = pack([[1, 2], [3, 4]], [[5], [6, 7, 8]], pad_id=0)
    assert batch.completion_mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


class RecordingLearners:
    """Learners whose old logprobs are -(the sequence's index in the call) per token, recording what was asked."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def experience(self, prompts, completions, old=False):
        self.asked.append([p[0] for p in prompts])
        return {"old_logprobs": [[-float(k)] * len(c) for k, c in enumerate(completions)]}


def test_skip_tied_groups_runs_the_old_logprob_forward_on_untied_groups_only() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from rlpost.trainer import Rollout, Trainer

    # three groups of 2 (prompt ids 0..5): group 0 ties at 1, group 1 ties at 0, group 2 does not
    samples = [Sample([i], [5, 6], [-0.5, -0.5], "stop") for i in range(6)]
    rollout = Rollout(samples, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]), {})
    algo = OmegaConf.structured(AlgoConfig(group_size=2, kl_coef=0.0, num_minibatches=2, skip_tied_groups=True))
    learners = RecordingLearners()
    cfg = OmegaConf.create({"algo": algo, "learner": {"num_ranks": 1}})
    items, _ = Trainer.pg_experience(SimpleNamespace(cfg=cfg, learners=learners, critic=None), rollout, 0.0)
    assert learners.asked == [[4, 5]]
    assert [it.old_logprobs for it in items[4:]] == [[0.0, 0.0], [-1.0, -1.0]]  # the learner's
    assert [it.old_logprobs for it in items[:4]] == [[-0.5, -0.5]] * 4  # tied (advantage 0): the engine's serve
    # three ranks take equal shares: the first tied sample makes it 3
    cfg.learner.num_ranks = 3
    Trainer.pg_experience(SimpleNamespace(cfg=cfg, learners=learners, critic=None), rollout, 0.0)
    assert learners.asked[-1] == [0, 4, 5]


class NoForwards:
    """Learners that must not be asked for a forward pass."""

    def experience(self, *args, **kwargs):
        raise AssertionError("the experience phase ran a learner forward")


def test_rollout_old_logprobs_skip_the_learner_forward() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from rlpost.trainer import Rollout, Trainer

    samples = [Sample([1], [5, 6], [-0.5, -1.5], "stop"), Sample([1], [7], [-2.0], "stop")]
    rollout = Rollout(samples, torch.tensor([1.0, 0.0]), {})
    algo = OmegaConf.structured(AlgoConfig(group_size=2, kl_coef=0.0, num_minibatches=2, old_logprobs="rollout"))
    driver = SimpleNamespace(cfg=OmegaConf.create({"algo": algo}), learners=NoForwards(), critic=None)
    items, _ = Trainer.pg_experience(driver, rollout, kl_coef=0.0)
    assert [it.old_logprobs for it in items] == [[-0.5, -1.5], [-2.0]]  # the engine's, as sampled
    driver.cfg.algo.old_logprobs = "learner"
    with pytest.raises(AssertionError, match="learner forward"):  # two mini-batches need the learner's
        Trainer.pg_experience(driver, rollout, kl_coef=0.0)
