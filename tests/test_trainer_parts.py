"""Pure pieces of the driver's step."""

from __future__ import annotations

from rlpost.learner.actor import TrainItem
from rlpost.trainer import deal_minibatches


def item(n_completion: int, tag: int) -> TrainItem:
    return TrainItem(prompt_ids=[tag], completion_ids=[0] * n_completion, advantage=float(tag), rollout_logprobs=[])


def test_deal_minibatches_shapes_and_global_counts() -> None:
    items = [item(n, i) for i, n in enumerate([1, 2, 3, 4, 5, 6, 7, 8])]
    per_rank = deal_minibatches(items, num_minibatches=2, num_ranks=2)
    assert len(per_rank) == 2 and all(len(mbs) == 2 for mbs in per_rank)
    # mini-batch 0 = items 0..3 (completion tokens 1+2+3+4 = 10), rank 0 gets 0,1 and rank 1 gets 2,3
    assert [it.advantage for it in per_rank[0][0].items] == [0.0, 1.0]
    assert [it.advantage for it in per_rank[1][0].items] == [2.0, 3.0]
    assert per_rank[0][0].global_tokens == per_rank[1][0].global_tokens == 10
    # mini-batch 1 = items 4..7 (5+6+7+8 = 26 tokens)
    assert [it.advantage for it in per_rank[1][1].items] == [6.0, 7.0]
    assert per_rank[0][1].global_tokens == 26 and per_rank[0][1].global_seqs == 4
    # every item is dealt exactly once
    dealt = sorted(it.advantage for mbs in per_rank for mb in mbs for it in mb.items)
    assert dealt == [float(i) for i in range(8)]
