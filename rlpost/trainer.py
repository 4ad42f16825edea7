"""The RL step, read top to bottom:

    prompts -> rollout (engines) -> rewards (verifier workers; DAPO's dynamic sampling refills the batch here)
            -> experience (learner and critic forwards: reference and sampling-policy logprobs, values; then
               advantages or preference pairs, pure functions)
            -> train (critic, then policy: DeepSpeed updates) -> weight sync -> metrics

With `trainer.max_staleness=k > 0` the rollout of the next k steps is generated while this one trains
(`rlpost.pipeline` owns that in-flight work and every sample's policy version); the phases read the same.

`algo.objective` picks how experience becomes training items: `pg_experience` (advantages, for grpo, dr_grpo,
rloo, reinforce_pp, ppo, dapo) or `dpo_experience` (pairs, for online_dpo); every other phase is shared.

The driver holds no model: it owns the data, the tokenizer (to decode completions for the rewards) and the
step; everything heavy is a Ray actor behind the groups in `rlpost.cluster.groups`. The loop around the steps
(evaluations, checkpoints, guards, resume) is `rlpost.loop.TrainLoop`, shared with the offline driver.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf

from rlpost.algos import adaptive_kl_coef, overlong_penalty, repeat_to, select_pairs
from rlpost.algos.dynamic_sampling import informative_groups, refill_size, tied_samples, untied_subset
from rlpost.cluster.engines import RolloutGroup
from rlpost.cluster.groups import CriticGroup, LearnerGroup, Placement, RewardGroup, WeightSync
from rlpost.cluster.ray_cluster import init_ray
from rlpost.config import needs_old_logprobs, needs_reference, sequences_per_example
from rlpost.data import Prompt, PromptLoader, build_prompts, load_rows, resolve_data_path
from rlpost.eval import Evaluator
from rlpost.experience import MiniBatch, TrainItem, pg_items
from rlpost.loop import TrainLoop
from rlpost.metrics import timed
from rlpost.models import load_tokenizer
from rlpost.pipeline import RolloutPipeline, check_staleness
from rlpost.rewards.manager import RewardResult, accuracy_component, component_labels
from rlpost.rollout.engine import Sample, SamplingParams
from rlpost.sync.transport import choose_transport


@dataclass
class Rollout:
    """A step's batch: `trainer.prompts_per_step` groups of `algo.group_size` completions, stored contiguously."""

    samples: list[Sample]
    scores: torch.Tensor  # [N] what the algorithm sees: the rewards' total plus any overlong penalty
    metrics: dict[str, float]  # rewards and responses over everything sampled this step, dropped groups included


def deal_minibatches(items: list[TrainItem], num_minibatches: int, num_ranks: int) -> list[list[MiniBatch]]:
    """Cut `items` into `num_minibatches` consecutive mini-batches and deal each evenly across ranks.
    Returns, per rank, its share of every mini-batch; each share carries the mini-batch's global completion-token
    and sequence counts (of the items in the loss), which the learner needs to normalise the loss as if the
    mini-batch were one batch. Tied items (`algo.skip_tied_groups`) stay in those counts and leave the shares, but
    for the few that even the shares out (`untied_subset`)."""
    size = len(items) // num_minibatches
    per_rank: list[list[MiniBatch]] = [[] for _ in range(num_ranks)]
    for m in range(num_minibatches):
        mb = items[m * size:(m + 1) * size]
        counted = [it for it in mb if it.in_loss]
        if any(it.tied for it in mb):
            mb = [mb[i] for i in untied_subset([it.tied for it in mb], num_ranks)]
        tokens, share = sum(len(it.completion_ids) for it in counted), len(mb) // num_ranks
        for r in range(num_ranks):
            per_rank[r].append(MiniBatch(mb[r * share:(r + 1) * share], tokens, len(counted)))
    return per_rank


def shuffled(items: list[TrainItem], unit: int, rng: np.random.Generator) -> list[TrainItem]:
    """`items` in a random order of blocks of `unit` consecutive items (a DPO pair stays together)."""
    order = rng.permutation(len(items) // unit).tolist()
    return [items[b * unit + j] for b in order for j in range(unit)]


class Trainer(TrainLoop):
    def __init__(self, cfg: DictConfig, model_path: str, run_dir: str) -> None:
        """Everything that can fail on bad input (data, tokenizer, chat template, loading the reward functions)
        happens before any actor; the reward functions' dry call on the first batch is the reward actor's first
        call in `start`, made on the workers it starts anyway (a pool of the driver's own for it cost ~2 s of
        process start-up and imports, a fifth of a CPU run's start-up)."""
        super().__init__(cfg, model_path, run_dir)
        self.tokenizer = load_tokenizer(model_path)
        rows = load_rows(resolve_data_path(cfg.data.train_path))
        if cfg.data.limit:
            rows = rows[:cfg.data.limit]
        prompts, dropped = build_prompts(rows, self.tokenizer, cfg.data.prompt_key, cfg.data.instruction,
                                         cfg.data.system_prompt, cfg.data.max_prompt_tokens)
        self.loader = PromptLoader(prompts, shuffle=cfg.data.shuffle, seed=cfg.data.seed)
        self.dropped_prompts = dropped
        # The live KL coefficient: algo.kl_coef at the start, adapted after every step when algo.kl_target > 0,
        # saved in checkpoints; each step reads it once and passes it down.
        self.kl_coef = float(cfg.algo.kl_coef)
        self.pair_rng = np.random.default_rng([cfg.trainer.seed, 1])
        self.critic: CriticGroup | None = None
        # For the dry call of every reward function at start-up: the first batch, not consumed from the loader.
        state = self.loader.state_dict()
        first = self.loader.next_batch(cfg.trainer.prompts_per_step)
        self.loader.load_state_dict(state)
        self.first_batch = ([p.text for p in first], [p.columns for p in first])
        self.accuracy = accuracy_component(cfg.reward, component_labels(cfg.reward))  # None: the total reward
        self.evaluator = Evaluator(cfg, self.tokenizer) if cfg.eval.enabled else None

    def start(self) -> None:
        cfg = self.cfg
        plain = OmegaConf.to_container(cfg, resolve=True)
        total_optimizer_steps = cfg.trainer.steps * cfg.algo.num_minibatches * cfg.algo.epochs
        needed = (cfg.learner.num_ranks + cfg.rollout.num_engines + cfg.reward.num_actors
                  + sum(m.num_actors for m in cfg.reward.models)
                  + (cfg.critic.num_ranks if cfg.critic.enabled else 0))
        init_ray(cfg.cluster.address, cfg.cluster.num_cpus or max(needed, os.cpu_count() or 1))
        # Reward workers, engines and learner ranks start side by side (each group's constructor starts its
        # actors' processes; `ready`/`setup` wait), except that a vLLM engine sharing its GPU with a learner rank
        # is up before the ranks build their models when it sizes its KV cache from the memory free at its
        # start-up (no `rollout.kv_cache_gb`) or stays awake beside them (`rollout.sleep_level=0`: the ranks then
        # check at start-up that a step fits in the memory the engines leave, rlpost/learner/memory.py).
        self.placement = Placement(plain)
        self.rewards = RewardGroup(OmegaConf.to_object(cfg.reward), cfg.cluster.device, self.placement)
        self.learners = LearnerGroup(plain, self.model_path, total_optimizer_steps, self.placement)
        if cfg.critic.enabled:
            self.critic = CriticGroup(plain, self.model_path, total_optimizer_steps, self.placement)
        self.rollout = RolloutGroup(plain, self.model_path, self.placement)
        self.rewards.ready(self.first_batch)  # a broken reward function stops the run now, as the models load
        if (self.placement.colocated and cfg.cluster.device == "cuda"
                and (self.rollout.needs_quiet_gpu or cfg.rollout.sleep_level == 0)):
            self.rollout.ready()
        self.pipeline = RolloutPipeline(self.rollout, self.loader, cfg.trainer.prompts_per_step, cfg.algo.group_size,
                                        cfg.trainer.max_staleness, cfg.trainer.steps, self.sampling_params)
        building = [(group, group.begin_setup()) for group in (self.learners, self.critic) if group is not None]
        for group, calls in building:  # the policy's and the critic's ranks build side by side
            group.get(calls)
        self.rollout.ready()
        transport = choose_transport(cfg.sync.transport, cfg.cluster.device, cfg.cluster.colocate)
        self.sync = WeightSync(self.learners, self.rollout, transport, cfg.sync.bucket_mb, cfg.sync.timeout_s,
                               cfg.rollout.tensor_parallel_size)
        self.checkpoint_groups["policy"] = self.learners
        if self.critic is not None:
            self.checkpoint_groups["critic"] = self.critic
        self.cluster_resources = ray.cluster_resources()

    def sampling_params(self, step: int, round_: int = 0) -> SamplingParams:
        rc = self.cfg.rollout
        seed = self.cfg.trainer.seed * 100_003 + step + round_ * 1_000_003  # dynamic sampling's rounds differ
        return SamplingParams(temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
                              max_new_tokens=rc.max_new_tokens, seed=seed)

    def evaluation(self, step: int, final: bool) -> dict[str, float]:
        """Through the engines: at the start, every `eval.every` steps and at the last; pass@k at the first and
        the last."""
        if self.evaluator is None or not (final or self.evaluator.due(step, self.cfg.trainer.steps)):
            return {}
        return self.evaluator.run(self.rollout, self.rewards, step, sampled_metrics=step == 0 or final)

    def driver_state(self) -> dict[str, Any]:
        # The loader as before the in-flight batches (rlpost.pipeline): a resumed run generates them again.
        return {"loader": self.pipeline.loader_state(), "kl_coef": self.kl_coef,
                "pair_rng": self.pair_rng.bit_generator.state}

    def restore_driver(self, state: dict[str, Any]) -> None:
        self.sync.sync()  # the engines get the loaded weights
        self.kl_coef = state["kl_coef"]  # the adaptive KL controller's state
        self.pair_rng.bit_generator.state = state["pair_rng"]

    def step(self, step: int) -> dict[str, float]:
        cfg, t_step = self.cfg, time.perf_counter()
        kl_coef = self.kl_coef  # this step's coefficient, passed down; the controller updates it after the step
        timings = dict.fromkeys(("time/generate", "time/reward", "time/experience", "time/train", "time/sync"), 0.0)
        rollout = self.collect(step, timings)
        # The sync phase as the step pays it: the engines' sleep here, then (colocated) both wake-ups and the
        # transfer below; sync/seconds is the transfer alone, as the sending learner timed it.
        with timed(timings, "time/sync"):
            self.rollout.sleep()  # colocated: the learner gets the GPU memory until the next sync
        with timed(timings, "time/experience"):
            if cfg.algo.objective == "dpo":
                items, experience = self.dpo_experience(rollout)
            else:
                items, experience = self.pg_experience(rollout, kl_coef)
        with timed(timings, "time/train"):
            train = self.train(items, step, kl_coef)
        with timed(timings, "time/generate"):  # what the next steps' generation in flight still takes
            self.pipeline.wait(learner_version=step)
        # Also when the policy did not move (critic warm-up, no DPO pair): a colocated engine that slept at
        # level 2 dropped its weights and must be handed them again.
        with timed(timings, "time/sync"):
            sync = self.sync.sync()
        if "kl/sequence" in experience:
            self.kl_coef = adaptive_kl_coef(kl_coef, experience["kl/sequence"], cfg.algo.kl_target,
                                            cfg.algo.kl_horizon, len(rollout.samples))
        # With trainer.max_staleness > 0, time/generate is only the generation the step waited for (the rest
        # overlapped training), so this rate is the rate as the loop sees it, above the engines' own.
        perf = {"perf/rollout_tokens_per_s": rollout.metrics["response/tokens"] / max(timings["time/generate"], 1e-9),
                "perf/step_seconds": time.perf_counter() - t_step, "data/epoch": float(self.loader.epoch),
                "kl/coef": kl_coef, "rollout/restarts": float(self.rollout.restarts)}
        if "learner/tokens" in train:
            perf["perf/learner_tokens_per_s"] = train["learner/tokens"] / max(train["learner/seconds"], 1e-9)
        return {**rollout.metrics, **experience, **train, **sync, **timings, **perf}

    # ---- rollout and rewards -----------------------------------------------------------------------------
    def collect(self, step: int, timings: dict[str, float]) -> Rollout:
        """Sample `prompts_per_step` prompts x `group_size` completions and score them.

        With `algo.dynamic_sampling`, groups whose scores are all equal are set aside and more prompts sampled,
        round after round, until the batch is full or `algo.max_sampled_prompts` prompts were sampled this step.
        A batch still short then is topped up with set-aside groups: zero-advantage data, which plain GRPO would
        have trained on anyway, so the learner always gets a batch of the configured size.
        """
        algo, want = self.cfg.algo, self.cfg.trainer.prompts_per_step
        group, dynamic = algo.group_size, algo.dynamic_sampling
        cap = (algo.max_sampled_prompts or 3 * want) if dynamic else want
        samples: list[Sample] = []
        results: list[RewardResult] = []
        scores: list[float] = []
        kept: list[int] = []  # first sample index of each group in the batch
        set_aside: list[int] = []
        sampled, rounds, n = 0, 0, want
        while n > 0:
            with timed(timings, "time/generate"):  # the first round may have been generated during earlier steps
                prompts, new_samples = (self.pipeline.take(step) if rounds == 0 else
                                        self.generate(self.loader.next_batch(n), step, rounds))
            result = self.score(prompts, new_samples, step, timings)
            new_scores = (torch.tensor(result.total) + self.overlong(new_samples)).tolist()
            for g, informative in enumerate(informative_groups(new_scores, group)):
                (kept if informative or not dynamic else set_aside).append(len(samples) + g * group)
            samples, scores = samples + new_samples, scores + new_scores
            results.append(result)
            sampled, rounds = sampled + n, rounds + 1
            n = refill_size(want - len(kept), sampled, len(kept), cap - sampled) if len(kept) < want else 0
        batch = [start + j for start in (kept + set_aside)[:want] for j in range(group)]
        staleness = check_staleness(step, [samples[i].policy_version for i in batch], self.cfg.trainer.max_staleness)

        totals = torch.tensor([t for r in results for t in r.total], dtype=torch.float32)
        metrics = self.sample_metrics(samples, RewardResult.concat(results), totals)
        metrics["reward/shaped_mean"] = sum(scores) / len(scores)
        metrics["sampling/informative_frac"] = sum(informative_groups(scores, group)) / (len(scores) // group)
        metrics["sampling/rounds"], metrics["sampling/prompts"] = float(rounds), float(sampled)
        metrics |= staleness
        return Rollout([samples[i] for i in batch], torch.tensor([scores[i] for i in batch]), metrics)

    def generate(self, prompts: list[Prompt], step: int, round_: int) -> tuple[list[Prompt], list[Sample]]:
        """A dynamic-sampling refill round, generated now by the engines' current weights (version step - 1)."""
        group = self.cfg.algo.group_size
        samples = self.rollout.generate([p.ids for p in prompts for _ in range(group)],
                                        self.sampling_params(step, round_))
        for s in samples:
            s.policy_version = step - 1
        return prompts, samples

    def score(self, prompts: list[Prompt], samples: list[Sample], step: int, timings: dict[str, float]
              ) -> RewardResult:
        group = self.cfg.algo.group_size
        with timed(timings, "time/reward"):
            texts = self.tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
            rewards = self.rewards.score([p.text for p in prompts for _ in range(group)], texts,
                                         [p.columns for p in prompts for _ in range(group)],
                                         [p.messages for p in prompts for _ in range(group)])
        self._record_failures(step, rewards)
        rewards.check_failures(self.cfg.reward.max_failure_frac, os.path.join(self.run_dir, "reward_failures.jsonl"))
        return rewards

    def overlong(self, samples: list[Sample]) -> torch.Tensor:
        """DAPO's soft overlong penalty per sample (zeros when `algo.overlong_buffer` is 0)."""
        algo, max_len = self.cfg.algo, self.cfg.rollout.max_new_tokens
        buffer = max(1, round(algo.overlong_buffer * max_len)) if algo.overlong_buffer > 0 else 0
        lengths = torch.tensor([len(s.completion_ids) for s in samples])
        return overlong_penalty(lengths, max_len, buffer, algo.overlong_penalty)

    # ---- experience ---------------------------------------------------------------------------------------
    def pg_experience(self, rollout: Rollout, kl_coef: float) -> tuple[list[TrainItem], dict[str, float]]:
        """Reference and sampling-policy logprobs (when the config needs them) and the critic's values, then
        token rewards (with `algo.kl_mode=reward`, minus `kl_coef` x the KL) and advantages
        (`rlpost.experience.pg_items`)."""
        algo = self.cfg.algo
        prompts = [s.prompt_ids for s in rollout.samples]
        completions = [s.completion_ids for s in rollout.samples]
        old = needs_old_logprobs(algo)
        if not (old or needs_reference(algo)):
            logprobs = {}
        elif algo.skip_tied_groups:  # old logprobs only (validation: no KL, so no reference); a tied sample's
            # advantage is zero, so for the few trained to even out the ranks' shares the engine's logprobs serve
            chosen = untied_subset(tied_samples(rollout.scores.tolist(), algo.group_size), self.cfg.learner.num_ranks)
            computed = self.learners.experience([prompts[i] for i in chosen], [completions[i] for i in chosen], old)
            logprobs = {"old_logprobs": [s.logprobs for s in rollout.samples]}
            for i, row in zip(chosen, computed["old_logprobs"], strict=True):
                logprobs["old_logprobs"][i] = row
        else:
            logprobs = self.learners.experience(prompts, completions, old)
        if algo.old_logprobs == "rollout":
            logprobs["old_logprobs"] = [s.logprobs for s in rollout.samples]
        values = self.critic.experience(prompts, completions)["values"] if self.critic is not None else None
        return pg_items(rollout.samples, rollout.scores, algo, kl_coef, logprobs.get("ref_logprobs"),
                        logprobs.get("old_logprobs"), values)

    def dpo_experience(self, rollout: Rollout) -> tuple[list[TrainItem], dict[str, float]]:
        """One (chosen, rejected) pair per prompt whose completions did not all tie (`algo.pairs` picks it),
        repeated up to one pair per prompt of the batch, and the reference's logprobs of every pair."""
        algo = self.cfg.algo
        pairs = select_pairs(rollout.scores.tolist(), algo.group_size, algo.pairs, self.pair_rng)
        metrics = {"dpo/distinct_pairs": float(len(pairs))}
        pairs = repeat_to(pairs, self.cfg.trainer.prompts_per_step)
        if not pairs:
            return [], metrics
        seqs = [rollout.samples[i] for pair in pairs for i in pair]
        ref = self.learners.experience([s.prompt_ids for s in seqs], [s.completion_ids for s in seqs])
        return [TrainItem(s.prompt_ids, s.completion_ids, s.logprobs, ref_logprobs=r)
                for s, r in zip(seqs, ref["ref_logprobs"], strict=True)], metrics

    # ---- training -----------------------------------------------------------------------------------------
    def train(self, items: list[TrainItem], step: int, kl_coef: float) -> dict[str, float]:
        """The critic's update, then the policy's (after the critic's warm-up steps; `kl_coef` weighs its KL loss
        term). Items are shuffled in whole training examples (a completion, or a DPO pair)."""
        cfg = self.cfg
        if not items:  # dpo, and no prompt gave a pair: nothing to learn from this step
            return {}
        unit = sequences_per_example(cfg.algo.objective)
        items = shuffled(items, unit, np.random.default_rng([cfg.trainer.seed, step]))
        metrics: dict[str, float] = {}
        if self.critic is not None:
            metrics |= self.critic.train_step(deal_minibatches(items, cfg.algo.num_minibatches, cfg.critic.num_ranks))
            if step <= cfg.critic.warmup_steps:
                return metrics
        per_rank = deal_minibatches(items, cfg.algo.num_minibatches, cfg.learner.num_ranks)
        metrics |= self.learners.train_step(per_rank, kl_coef)
        if cfg.algo.skip_tied_groups:
            metrics["batch/trained_frac"] = sum(len(mb.items) for mbs in per_rank for mb in mbs) / len(items)
        return metrics

    def sample_metrics(self, samples: list[Sample], rewards: RewardResult, scores: torch.Tensor
                       ) -> dict[str, float]:
        lengths = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.float32)
        metrics = {"reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
                   "reward/errors": float(rewards.errors), "reward/timeouts": float(rewards.timeouts),
                   "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
                   "response/tokens": float(lengths.sum()),
                   "response/truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples)}
        for label, values in rewards.components.items():
            metrics[f"reward/{label}"] = sum(values) / len(values)
        metrics.update({f"reward/{key}": mean for key, mean in rewards.extra_means().items()})
        correct = rewards.correct(self.accuracy)
        metrics["accuracy"] = sum(correct) / len(correct)
        return metrics

    def _record_failures(self, step: int, rewards: RewardResult) -> None:
        """The first failing samples of each step go to the run folder, so a broken reward is debuggable."""
        if rewards.failures:
            with open(os.path.join(self.run_dir, "reward_failures.jsonl"), "a") as f:
                for failure in rewards.failures:
                    f.write(json.dumps({"step": step, **failure}) + "\n")

    def close(self) -> None:
        """Kill this run's actors and free their placement groups (the Ray cluster itself stays up)."""
        for group in (getattr(self, name, None)
                      for name in ("rewards", "rollout", "learners", "critic", "placement")):
            if group is not None:
                group.shutdown()
