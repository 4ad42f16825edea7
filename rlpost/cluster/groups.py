"""Actor groups: the learner ranks, the rollout engines and the reward workers, each in its placement group,
and the weight-sync wiring between learners and engines. This is the only module that knows the topology; the
trainer sees three groups with plain methods."""

from __future__ import annotations

import ray
from ray.util.placement_group import remove_placement_group

from rlpost.cluster.ray_cluster import actor_env, create_placement_group, in_bundle
from rlpost.config import RewardConfig
from rlpost.learner.actor import LearnerRank, MiniBatch
from rlpost.rewards.manager import RewardManager, RewardResult
from rlpost.rollout.engine import Sample, SamplingParams
from rlpost.rollout.hf_engine import HFEngine
from rlpost.sync.transport import SyncGroupInfo


def _split(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (keeps each prompt's group together when sizes allow)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class ActorGroup:
    """Actors placed in one placement group; `shutdown` kills them and frees the group's resources."""

    actors: list
    pg = None

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.pg is not None:
            remove_placement_group(self.pg)


class LearnerGroup(ActorGroup):
    def __init__(self, cfg: dict, model_path: str, total_optimizer_steps: int) -> None:
        n = cfg["learner"]["num_ranks"]
        device = cfg["cluster"]["device"]
        self.pg = create_placement_group("learner", [{"CPU": 1}] * n)
        actor = ray.remote(LearnerRank)
        options = [dict(num_cpus=1, scheduling_strategy=in_bundle(self.pg, i),
                        runtime_env={"env_vars": actor_env(device)}) for i in range(n)]
        self.ranks = self.actors = [actor.options(**options[i]).remote(cfg, i, n, model_path, total_optimizer_steps)
                                    for i in range(n)]
        addr, port = ray.get(self.ranks[0].address.remote())
        ray.get([r.setup.remote(addr, port) for r in self.ranks])

    def train_step(self, per_rank: list[list[MiniBatch]]) -> dict[str, float]:
        results = ray.get([r.train_step.remote(mbs) for r, mbs in zip(self.ranks, per_rank, strict=True)])
        merged = {k: sum(res[k] for res in results) / len(results) for k in results[0]}
        merged["learner/tokens"] = sum(res["learner/tokens"] for res in results)
        merged["learner/seconds"] = max(res["learner/seconds"] for res in results)
        return merged

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        return ray.get([r.score.remote(prompts, completions) for r in self.ranks])[0]

    def weights_digest(self) -> str:
        return ray.get([r.weights_digest.remote() for r in self.ranks])[0]

    # Checkpointing (rlpost.checkpoint): every rank takes part, each writes its own share into `path`.
    def save_checkpoint(self, path: str) -> None:
        ray.get([r.save_checkpoint.remote(path) for r in self.ranks])

    def load_checkpoint(self, path: str) -> None:
        ray.get([r.load_checkpoint.remote(path) for r in self.ranks])

    def export_hf(self, path: str) -> None:
        ray.get([r.export_hf.remote(path) for r in self.ranks])


class RolloutGroup(ActorGroup):
    def __init__(self, cfg: dict, model_path: str) -> None:
        rc = cfg["rollout"]
        device = cfg["cluster"]["device"]
        self.pg = create_placement_group("rollout", [{"CPU": 1}] * rc["num_engines"])
        actor = ray.remote(HFEngine)
        self.engines = self.actors = [actor.options(num_cpus=1, scheduling_strategy=in_bundle(self.pg, i),
                                      runtime_env={"env_vars": actor_env(device)})
                        .remote(model_path, cfg["model"]["dtype"], rc["batch_size"], device)
                        for i in range(rc["num_engines"])]
        ray.get([e.ready.remote() for e in self.engines])

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        chunks = _split(prompts, len(self.engines))
        futures = []
        for i, (engine, chunk) in enumerate(zip(self.engines, chunks, strict=True)):
            seed = None if params.seed is None else params.seed * 1000 + i  # engines must not sample alike
            futures.append(engine.generate.remote(chunk, SamplingParams(**{**params.__dict__, "seed": seed})))
        return [s for part in ray.get(futures) for s in part]

    def score(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        return ray.get(self.engines[0].score.remote(prompts, completions, temperature))

    def weights_digests(self) -> list[str]:
        return ray.get([e.weights_digest.remote() for e in self.engines])


class RewardWorker:
    """A Ray actor owning a RewardManager (and so a pool of verifier processes)."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.manager = RewardManager(cfg)

    def labels(self) -> list[str]:
        return self.manager.labels

    def score(self, prompts: list[str], completions: list[str], columns: list[dict]) -> RewardResult:
        return self.manager.score(prompts, completions, columns)


class RewardGroup(ActorGroup):
    def __init__(self, reward_cfg: RewardConfig, device: str) -> None:
        n = reward_cfg.num_actors
        self.pg = create_placement_group("reward", [{"CPU": 1}] * n)
        actor = ray.remote(RewardWorker)
        self.workers = self.actors = [actor.options(num_cpus=1, scheduling_strategy=in_bundle(self.pg, i),
                                      runtime_env={"env_vars": actor_env(device)}).remote(reward_cfg)
                        for i in range(n)]
        self.labels: list[str] = ray.get(self.workers[0].labels.remote())

    def score(self, prompts: list[str], completions: list[str], columns: list[dict]) -> RewardResult:
        parts = [_split(x, len(self.workers)) for x in (prompts, completions, columns)]
        results = ray.get([w.score.remote(p, c, col) for w, p, c, col in zip(self.workers, *parts, strict=True)])
        return RewardResult.concat(results)


class WeightSync:
    """Learner rank 0 -> every rollout engine, over a dedicated group of the chosen transport."""

    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup, transport: str, bucket_mb: float,
                 timeout_s: float) -> None:
        self.learners, self.rollout = learners, rollout
        plan = ray.get([r.sync_plan.remote(bucket_mb) for r in learners.ranks])[0]
        host, port = ray.get(learners.ranks[0].address.remote())
        info = SyncGroupInfo(transport, host, port, 1 + len(rollout.engines), timeout_s)
        # Every member joins at once: group construction blocks until all of them are there.
        ray.get([r.init_weight_sync.remote(info) for r in learners.ranks]
                + [e.init_weight_sync.remote(info, i + 1, plan) for i, e in enumerate(rollout.engines)])
        self.num_buckets = len(plan)

    def sync(self) -> dict[str, float]:
        results = ray.get([r.send_weights.remote() for r in self.learners.ranks]
                          + [e.receive_weights.remote() for e in self.rollout.engines])
        return results[0]
