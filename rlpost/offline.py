"""Offline training on a fixed pair file: offline DPO (`algo=dpo_offline`) and reward-model training
(`algo=reward_model`, what `rlpost-train-rm` runs), through the same DeepSpeed learner group as online training,
with no rollout engines, no reward actors and no weight sync.

A step: the next `trainer.prompts_per_step` pairs of `pairs.path` (epoch after epoch, in an order seeded by
`data.seed`: `PromptLoader`) -> for DPO, the frozen reference's logprobs of both completions
(`LearnerGroup.experience`) -> `LearnerGroup.train_step` in `algo.num_minibatches` mini-batches (the learner's
DPO loss, or `RewardModelRank`'s Bradley-Terry loss) -> one metrics row. The held-out pairs (`pairs.eval_path`,
or the last `pairs.eval_fraction` of the file; the first `eval.limit` of them) are evaluated at the start, every
`eval.every` steps and at the end: `eval/pair_accuracy` (the share ranked right, a tie counting half),
`eval/margin`, `eval/loss` and `eval/pairs` (how many: an accuracy on 57 pairs is +-0.13), from the RM's scores,
or from DPO's implicit reward beta x the log-ratio gap to the reference.

Why a driver of its own rather than a mode of `rlpost.trainer.Trainer`: every phase of the online step but the
update (rollout, rewards, dynamic sampling, sync, the engines' evaluation) is absent here, and what remains is
short. The loop around the steps is the online one (`rlpost.loop.TrainLoop`): the same evaluations schedule,
collapse guards, checkpoints, stop on SIGTERM, budget and resume (`trainer.resume`; the checkpoint holds the pair
loader's position, so a resumed run trains on exactly the pairs the uninterrupted one would have).
`rlpost.train.run` picks this class when `algo.offline` is set. The final model is exported to
`<run_dir>/hf_model`: a causal LM for DPO, for the RM a one-output sequence-classification folder that
`reward.models=[{path: <run_dir>/hf_model}]` loads as is (checked with `check_reward_model` on export).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
import torch
from omegaconf import DictConfig, OmegaConf

from rlpost.algos import DPO_LOSSES, REWARD_MODEL_LOSSES, pair_accuracy, sequence_logprob
from rlpost.cluster.groups import LearnerGroup, Placement, RewardModelLearnerGroup
from rlpost.cluster.ray_cluster import init_ray
from rlpost.config import RewardModelConfig
from rlpost.data import PromptLoader
from rlpost.data.preferences import load_preference_pairs, pair_sequences, split_held_out
from rlpost.experience import TrainItem, padded
from rlpost.loop import TrainLoop
from rlpost.metrics import timed
from rlpost.models import load_tokenizer, stop_token_ids
from rlpost.rewards.reward_model import check_reward_model
from rlpost.trainer import deal_minibatches


class OfflineTrainer(TrainLoop):
    def __init__(self, cfg: DictConfig, model_path: str, run_dir: str) -> None:
        """Reads, checks and tokenizes the pairs before any actor starts (a bad row stops here, or is skipped)."""
        super().__init__(cfg, model_path, run_dir)
        self.rm = cfg.algo.objective == "rm"
        self.tokenizer = load_tokenizer(model_path)
        pc, limit = cfg.pairs, cfg.data.max_prompt_tokens
        pairs, self.skipped = load_preference_pairs(pc.path, "pairs.path", self.tokenizer, pc, limit)
        if pc.eval_path:
            train, held_out = pairs, load_preference_pairs(pc.eval_path, "pairs.eval_path", self.tokenizer, pc,
                                                           limit)[0]
        else:
            train, held_out = split_held_out(pairs, pc.eval_fraction, cfg.data.seed)
        held_out = held_out[:cfg.eval.limit] if cfg.eval.limit else held_out
        # Every rank forwards an equal share (ZeRO-3's forwards are collective): whole pairs, a multiple of ranks.
        held_out = held_out[:len(held_out) - len(held_out) % cfg.learner.num_ranks]
        # The policy's completions end at the stop token where an engine would stop; the RM reads the rendering.
        stop = None if self.rm else stop_token_ids(model_path, self.tokenizer)
        self.prompts, self.completions = pair_sequences(self.tokenizer, train, stop)
        self.eval_prompts, self.eval_completions = pair_sequences(self.tokenizer, held_out, stop)
        self.eval_ref: list[list[float]] | None = None  # the frozen reference's held-out logprobs, computed once
        self.loader = PromptLoader(list(range(len(train))), shuffle=cfg.data.shuffle, seed=cfg.data.seed)
        self.summary = (f"{len(train)} training pairs, {len(held_out)} held out"
                        + (f" ({self.skipped} bad rows skipped)" if self.skipped else ""))
        self.export_name = "reward model" if self.rm else "policy"
        self.learners: LearnerGroup | None = None
        self.placement: Placement | None = None

    def start(self) -> None:
        cfg = self.cfg
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain["rollout"]["num_engines"] = 0  # no engines offline: placement reserves nothing for them
        init_ray(cfg.cluster.address, cfg.cluster.num_cpus or max(cfg.learner.num_ranks, os.cpu_count() or 1))
        self.placement = Placement(plain)
        group = RewardModelLearnerGroup if self.rm else LearnerGroup
        total_optimizer_steps = cfg.trainer.steps * cfg.algo.num_minibatches * cfg.algo.epochs
        self.learners = group(plain, self.model_path, total_optimizer_steps, self.placement)
        self.learners.setup()
        self.checkpoint_groups["reward_model" if self.rm else "policy"] = self.learners
        self.cluster_resources = ray.cluster_resources()

    def step(self, step: int) -> dict[str, float]:
        cfg, t0 = self.cfg, time.perf_counter()
        timings = dict.fromkeys(("time/experience", "time/train"), 0.0)
        pairs = self.loader.next_batch(cfg.trainer.prompts_per_step)
        prompts = [self.prompts[2 * k + j] for k in pairs for j in range(2)]
        completions = [self.completions[2 * k + j] for k in pairs for j in range(2)]
        refs: list[list[float] | None] = [None] * len(prompts)
        if not self.rm:
            with timed(timings, "time/experience"):
                refs = self.learners.experience(prompts, completions)["ref_logprobs"]
        items = [TrainItem(p, c, [], ref_logprobs=r) for p, c, r in zip(prompts, completions, refs, strict=True)]
        with timed(timings, "time/train"):
            train = self.learners.train_step(deal_minibatches(items, cfg.algo.num_minibatches,
                                                              cfg.learner.num_ranks))
        lengths = [len(c) for c in completions]
        return {**train, **timings, "response/length_mean": sum(lengths) / len(lengths),
                "data/epoch": float(self.loader.epoch), "perf/step_seconds": time.perf_counter() - t0}

    def evaluate(self) -> dict[str, float]:
        """Held-out pair accuracy, margin and loss under the model as it is now (DPO: also each side's log-ratio
        to the reference, as in training)."""
        algo, t0 = self.cfg.algo, time.perf_counter()
        prompts, completions = self.eval_prompts, self.eval_completions
        sides: dict[str, float] = {}
        if self.rm:
            scores = torch.tensor(self.learners.score(prompts, completions))
            loss, margin = REWARD_MODEL_LOSSES.get(algo.rm_loss)(scores[0::2], scores[1::2])
        else:
            if self.eval_ref is None:
                self.eval_ref = self.learners.experience(prompts, completions)["ref_logprobs"]
            policy = sequence_logprob(*padded(self.learners.score(prompts, completions)), algo.dpo_length_norm)
            ref = sequence_logprob(*padded(self.eval_ref), algo.dpo_length_norm)
            loss, margin = DPO_LOSSES.get(algo.dpo_loss)(policy[0::2], policy[1::2], ref[0::2], ref[1::2],
                                                         algo.dpo_beta)
            log_ratio = policy - ref  # chosen, rejected, chosen, ...
            sides = {"eval/chosen_logratio": float(log_ratio[0::2].mean()),
                     "eval/rejected_logratio": float(log_ratio[1::2].mean())}
        return {"eval/pair_accuracy": float(pair_accuracy(margin)), "eval/margin": float(margin.mean()),
                "eval/loss": float(loss.mean()), "eval/pairs": float(len(margin)), **sides,
                "time/eval": time.perf_counter() - t0}

    def evaluation(self, step: int, final: bool) -> dict[str, float]:
        """The held-out pairs at the start, every `eval.every` steps and at the last."""
        every = self.cfg.eval.every
        due = step == 0 or final or (every > 0 and step % every == 0)
        return self.evaluate() if due and self.cfg.eval.enabled and self.eval_prompts else {}

    def export_hf(self) -> Path:
        final = super().export_hf()
        if self.rm:  # what `reward.models` will check at start-up, checked now
            check_reward_model(RewardModelConfig(path=str(final)), 0, "cpu")
        return final

    def close(self) -> None:
        for group in (self.learners, self.placement):
            if group is not None:
                group.shutdown()

