"""The RL step, algorithm-agnostic, read top to bottom:

    prompts -> rollout (engines) -> rewards (verifier workers) -> advantages (pure fn, here)
            -> update (learner ranks: ref logprobs, policy loss, optimizer) -> weight sync -> metrics

The driver holds no model: it owns the data, the tokenizer (to decode completions for the rewards) and the
loop; everything heavy is a Ray actor behind the groups in `rlpost.cluster.groups`.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from rlpost.algos import ADVANTAGES
from rlpost.cluster.groups import LearnerGroup, Placement, RewardGroup, RolloutGroup, WeightSync
from rlpost.cluster.ray_cluster import init_ray
from rlpost.data import PromptLoader, build_prompts, load_rows, resolve_data_path
from rlpost.learner.actor import MiniBatch, TrainItem
from rlpost.metrics import MetricsLogger
from rlpost.rewards.manager import RewardResult, check_reward_functions
from rlpost.rollout.engine import Sample, SamplingParams
from rlpost.sync.transport import choose_transport


def deal_minibatches(items: list[TrainItem], num_minibatches: int, num_ranks: int) -> list[list[MiniBatch]]:
    """Cut `items` into `num_minibatches` consecutive mini-batches and deal each evenly across ranks.
    Returns, per rank, its share of every mini-batch; each share carries the mini-batch's global completion-token
    and sequence counts, which the learner needs to normalise the loss as if the mini-batch were one batch."""
    size = len(items) // num_minibatches
    per_rank: list[list[MiniBatch]] = [[] for _ in range(num_ranks)]
    for m in range(num_minibatches):
        mb = items[m * size:(m + 1) * size]
        tokens, share = sum(len(it.completion_ids) for it in mb), len(mb) // num_ranks
        for r in range(num_ranks):
            per_rank[r].append(MiniBatch(mb[r * share:(r + 1) * share], tokens, len(mb)))
    return per_rank


class Trainer:
    def __init__(self, cfg: DictConfig, model_path: str, run_dir: str) -> None:
        """Everything that can fail on bad input (data, tokenizer, chat template, reward functions) happens
        before any actor."""
        self.cfg, self.model_path, self.run_dir = cfg, model_path, run_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        rows = load_rows(resolve_data_path(cfg.data.train_path))
        if cfg.data.limit:
            rows = rows[:cfg.data.limit]
        prompts, dropped = build_prompts(rows, self.tokenizer, cfg.data.prompt_key, cfg.data.instruction,
                                         cfg.data.system_prompt, cfg.data.max_prompt_tokens)
        self.loader = PromptLoader(prompts, shuffle=cfg.data.shuffle, seed=cfg.data.seed)
        self.dropped_prompts = dropped
        self.advantage_fn = ADVANTAGES.get(cfg.algo.advantage)
        # A dry call of every reward function on the first batch (without consuming it from the loader).
        state = self.loader.state_dict()
        first = self.loader.next_batch(cfg.trainer.prompts_per_step)
        self.loader.load_state_dict(state)
        check_reward_functions(OmegaConf.to_object(cfg.reward), [p.text for p in first], [p.columns for p in first])

    def start(self) -> None:
        cfg = self.cfg
        plain = OmegaConf.to_container(cfg, resolve=True)
        total_optimizer_steps = cfg.trainer.steps * cfg.algo.num_minibatches * cfg.algo.epochs
        needed = (cfg.learner.num_ranks + cfg.rollout.num_engines + cfg.reward.num_actors
                  + sum(m.num_actors for m in cfg.reward.models))
        init_ray(cfg.cluster.address, cfg.cluster.num_cpus or max(needed, os.cpu_count() or 1))
        self.rewards = RewardGroup(OmegaConf.to_object(cfg.reward), cfg.cluster.device)
        self.placement = Placement(plain)
        # Engines first: vLLM sizes its KV cache from the memory free at start-up, before the learner's arrives.
        self.rollout = RolloutGroup(plain, self.model_path, self.placement)
        self.learners = LearnerGroup(plain, self.model_path, total_optimizer_steps, self.placement)
        transport = choose_transport(cfg.sync.transport, cfg.cluster.device, cfg.cluster.colocate)
        self.sync = WeightSync(self.learners, self.rollout, transport, cfg.sync.bucket_mb, cfg.sync.timeout_s,
                               cfg.rollout.tensor_parallel_size)

    def sampling_params(self, step: int) -> SamplingParams:
        rc = self.cfg.rollout
        return SamplingParams(temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
                              max_new_tokens=rc.max_new_tokens, seed=self.cfg.trainer.seed * 100_003 + step)

    def step(self, step: int) -> dict[str, float]:
        cfg, group = self.cfg, self.cfg.algo.group_size
        timings: dict[str, float] = {}
        t_step = time.perf_counter()

        batch = self.loader.next_batch(cfg.trainer.prompts_per_step)
        t = time.perf_counter()
        samples = self.rollout.generate([p.ids for p in batch for _ in range(group)], self.sampling_params(step))
        self.rollout.sleep()  # colocated: the learner gets the GPU memory until the next sync
        timings["time/generate"] = time.perf_counter() - t

        t = time.perf_counter()
        texts = self.tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
        rewards = self.rewards.score([p.text for p in batch for _ in range(group)], texts,
                                     [p.columns for p in batch for _ in range(group)],
                                     [p.messages for p in batch for _ in range(group)])
        timings["time/reward"] = time.perf_counter() - t
        self._record_failures(step, rewards)
        rewards.check_failures(cfg.reward.max_failure_frac, os.path.join(self.run_dir, "reward_failures.jsonl"))

        scores = torch.tensor(rewards.total, dtype=torch.float32)
        advantages = self.advantage_fn(scores, group, std_normalize=cfg.algo.std_normalize)
        items = [TrainItem(s.prompt_ids, s.completion_ids, float(a), s.logprobs)
                 for s, a in zip(samples, advantages.tolist(), strict=True)]
        t = time.perf_counter()
        order = np.random.default_rng([cfg.trainer.seed, step]).permutation(len(items)).tolist()
        learner = self.learners.train_step(deal_minibatches([items[i] for i in order], cfg.algo.num_minibatches,
                                                            cfg.learner.num_ranks))
        timings["time/train"] = time.perf_counter() - t

        sync = self.sync.sync()
        timings["time/sync"] = sync["sync/seconds"]
        step_seconds = time.perf_counter() - t_step
        completion_tokens = sum(len(s.completion_ids) for s in samples)
        return {**self.sample_metrics(samples, rewards, scores), **learner, **sync, **timings,
                "perf/rollout_tokens_per_s": completion_tokens / timings["time/generate"],
                "perf/learner_tokens_per_s": learner["learner/tokens"] / max(learner["learner/seconds"], 1e-9),
                "perf/step_seconds": step_seconds, "data/epoch": float(self.loader.epoch)}

    def sample_metrics(self, samples: list[Sample], rewards: RewardResult, scores: torch.Tensor
                       ) -> dict[str, float]:
        lengths = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.float32)
        metrics = {"reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
                   "reward/errors": float(rewards.errors), "reward/timeouts": float(rewards.timeouts),
                   "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
                   "response/truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples)}
        for label, values in rewards.components.items():
            metrics[f"reward/{label}"] = sum(values) / len(values)
        metrics.update({f"reward/{key}": mean for key, mean in rewards.extra_means().items()})
        if self.cfg.reward.accuracy in rewards.components:
            values = rewards.components[self.cfg.reward.accuracy]
            metrics["accuracy"] = sum(v > 0 for v in values) / len(values)
        return metrics

    def _record_failures(self, step: int, rewards: RewardResult) -> None:
        """The first failing samples of each step go to the run folder, so a broken reward is debuggable."""
        if rewards.failures:
            with open(os.path.join(self.run_dir, "reward_failures.jsonl"), "a") as f:
                for failure in rewards.failures:
                    f.write(json.dumps({"step": step, **failure}) + "\n")

    def close(self) -> None:
        """Kill this run's actors and free their placement groups (the Ray cluster itself stays up)."""
        for group in (getattr(self, name, None) for name in ("rewards", "rollout", "learners", "placement")):
            if group is not None:
                group.shutdown()

    def fit(self) -> list[dict[str, float]]:
        cfg = self.cfg
        logger = MetricsLogger(self.run_dir, cfg.trainer.steps, cfg.logger.wandb.mode, cfg.logger.wandb.project,
                               OmegaConf.to_container(cfg, resolve=True), progress=cfg.logger.progress)
        history = []
        try:
            for step in range(1, cfg.trainer.steps + 1):
                metrics = self.step(step)
                logger.log(step, metrics)
                history.append(metrics)
        finally:
            logger.close()
        return history
