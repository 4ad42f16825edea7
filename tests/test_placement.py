"""Placement on a colocated GPU cluster with reward models: the GPU reward-model actors join the learners' GPU
bundles, and every member's share fits (Ray's logical GPUs: no GPU needed)."""

from __future__ import annotations

import pytest
import ray

from rlpost.cluster.groups import Placement, colocated_members
from rlpost.cluster.ray_cluster import in_bundle


def test_colocated_members_counts_an_even_share_of_reward_model_actors() -> None:
    assert colocated_members(1, 0, 1) == 2  # learner + engine (single_gpu, no reward model)
    assert colocated_members(1, 1, 1) == 3  # + the RM scorer
    assert colocated_members(2, 3, 2) == 5  # learner, critic, engine + ceil(3 / 2) scorers per GPU
    assert colocated_members(1, 4, 4) == 3
    assert colocated_members(1, 1, 1, engines_per_gpu=2) == 4  # learner, 2 engines, the scorer


@pytest.mark.slow
def test_reward_model_actors_fit_in_the_colocated_bundles() -> None:
    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False)
    try:
        cfg = {"cluster": {"device": "cuda", "colocate": True, "name": "single_gpu"},
               "rollout": {"num_engines": 2, "tensor_parallel_size": 1},
               "learner": {"num_ranks": 2}, "critic": {"enabled": False, "num_ranks": 0},
               "reward": {"models": [{"num_actors": 2, "num_gpus": 1}, {"num_actors": 1, "num_gpus": 0.5},
                                     {"num_actors": 4, "num_gpus": 0}]}}  # the last scores on the CPU
        placement = Placement(cfg)
        assert placement.shared.bundle_specs == [{"GPU": 1, "CPU": 4}] * 2  # learner, engine, 2 scorers
        assert placement.gpus == {"learner": 0.25, "rollout": 0.25, "reward_model": 0.25}
        assert [placement.reward_model_bundle(j) for j in range(3)] == [0, 1, 0]

        @ray.remote
        class Member:
            def gpu(self) -> list:
                return ray.get_gpu_ids()

        # Every member of both bundles at once: learner rank and engine per bundle, the 3 GPU scorers
        # round-robin (as RewardModelGroup places them).
        members = [(name, b) for b in range(2) for name in ("learner", "rollout")]
        members += [("reward_model", placement.reward_model_bundle(j)) for j in range(3)]
        actors = [Member.options(num_cpus=1, num_gpus=placement.gpus[name],
                                 scheduling_strategy=in_bundle(placement.shared, b)).remote()
                  for name, b in members]
        ready, _ = ray.wait([a.gpu.remote() for a in actors], num_returns=len(actors), timeout=60)
        assert len(ready) == len(actors)
        placement.shutdown()

        # Two engines per learner GPU: engines 0, 1 beside learner rank 0, engines 2, 3 beside rank 1.
        cfg["rollout"]["engines_per_gpu"], cfg["reward"]["models"] = 2, []
        placement = Placement(cfg)
        assert placement.shared.bundle_specs == [{"GPU": 1, "CPU": 3}] * 2
        assert [placement.engine_bundle(i) for i in range(4)] == [0, 0, 1, 1]
        assert placement.gpus["rollout"] == pytest.approx(1 / 3)
        placement.shutdown()

        # Engines only (`rlpost.pairs` on cluster=single_gpu: the recipe's two engines, no learner): one GPU for
        # both, not a GPU each (which a one-GPU machine does not have).
        cfg["learner"]["num_ranks"], cfg["rollout"]["num_engines"] = 0, 4
        placement = Placement(cfg)
        assert placement.shared.bundle_specs == [{"GPU": 1, "CPU": 2}] * 2  # 4 engines, 2 a GPU
        assert [placement.engine_bundle(i) for i in range(4)] == [0, 0, 1, 1]
        assert placement.gpus["rollout"] == pytest.approx(1 / 2)
        placement.shutdown()
        cfg["rollout"]["num_engines"] = 2
        placement = Placement(cfg)
        assert placement.shared.bundle_specs == [{"GPU": 1, "CPU": 2}]
        placement.shutdown()
    finally:
        ray.shutdown()
