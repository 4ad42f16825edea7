"""Offline training on a fixed pair file: offline DPO (`algo=dpo_offline`) and reward-model training
(`algo=reward_model`, what `rlpost-train-rm` runs), through the same DeepSpeed learner group as online training,
with no rollout engines, no reward actors and no weight sync.

A step: the next `trainer.prompts_per_step` pairs of `pairs.path` (epoch after epoch, in an order seeded by
`data.seed`: `PromptLoader`) -> for DPO, the frozen reference's logprobs of both completions
(`LearnerGroup.experience`) -> `LearnerGroup.train_step` in `algo.num_minibatches` mini-batches (the learner's
DPO loss, or `RewardModelRank`'s Bradley-Terry loss) -> one metrics row. The held-out pairs (`pairs.eval_path`,
or the last `pairs.eval_fraction` of the file; the first `eval.limit` of them) are evaluated at the start, every
`eval.every` steps and at the end: `eval/pair_accuracy` (the share ranked right), `eval/margin` and `eval/loss`,
from the RM's scores, or from DPO's implicit reward beta x the log-ratio gap to the reference.

Why a driver of its own rather than a mode of `rlpost.trainer.Trainer`: every phase of the online loop but the
update (rollout, rewards, dynamic sampling, sync, the engines' evaluation) is absent here, and what remains is
short. `rlpost.train.run` picks this class when `algo.offline` is set. Checkpoints have the online layout
(`rlpost.checkpoint`); resuming is not supported yet (validation refuses `trainer.resume`). The final model is
exported to `<run_dir>/hf_model`: a causal LM for DPO, for the RM a one-output sequence-classification folder
that `reward.models=[{path: <run_dir>/hf_model}]` loads as is (checked with `check_reward_model` on export).
"""

from __future__ import annotations

import os
import time

import ray
import torch
from omegaconf import DictConfig, OmegaConf

from rlpost import checkpoint as ckpt
from rlpost import signals
from rlpost.algos import DPO_LOSSES, REWARD_MODEL_LOSSES, sequence_logprob
from rlpost.cluster.groups import LearnerGroup, Placement, RewardModelLearnerGroup
from rlpost.cluster.ray_cluster import init_ray
from rlpost.config import RewardModelConfig
from rlpost.data import PromptLoader
from rlpost.data.preferences import load_preference_pairs, pair_sequences, split_held_out
from rlpost.experience import TrainItem, padded
from rlpost.loop import stop_if_collapsed
from rlpost.metrics import MetricsLogger, timed
from rlpost.models import load_tokenizer, stop_token_ids
from rlpost.report import read_metrics
from rlpost.rewards.reward_model import check_reward_model
from rlpost.trainer import deal_minibatches


class OfflineTrainer:
    def __init__(self, cfg: DictConfig, model_path: str, run_dir: str) -> None:
        """Reads, checks and tokenizes the pairs before any actor starts (a bad row stops here, or is skipped)."""
        self.cfg, self.model_path, self.run_dir = cfg, model_path, run_dir
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
        self.checkpoints = ckpt.CheckpointManager(run_dir, cfg.trainer.keep_checkpoints)
        self.fingerprint = ckpt.fingerprint(cfg, model_path)
        self.group_name = "reward_model" if self.rm else "policy"
        self.learners: LearnerGroup | None = None
        self.placement: Placement | None = None
        self.cluster_resources: dict[str, float] = {}

    def start(self) -> None:
        cfg = self.cfg
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain["rollout"]["num_engines"] = 0  # no engines offline: placement reserves nothing for them
        init_ray(cfg.cluster.address, cfg.cluster.num_cpus or max(cfg.learner.num_ranks, os.cpu_count() or 1))
        self.placement = Placement(plain)
        group = RewardModelLearnerGroup if self.rm else LearnerGroup
        total_optimizer_steps = cfg.trainer.steps * cfg.algo.num_minibatches * cfg.algo.epochs
        self.learners = group(plain, self.model_path, total_optimizer_steps, self.placement)
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
        """Held-out pair accuracy, margin and loss under the model as it is now."""
        algo, t0 = self.cfg.algo, time.perf_counter()
        prompts, completions = self.eval_prompts, self.eval_completions
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
        return {"eval/pair_accuracy": float((margin > 0).float().mean()), "eval/margin": float(margin.mean()),
                "eval/loss": float(loss.mean()), "time/eval": time.perf_counter() - t0}

    def fit(self) -> list[dict[str, float]]:
        """Train `trainer.steps` steps (or until `trainer.max_minutes` of training have passed), evaluate,
        checkpoint every `trainer.save_every` steps and at the last, export the final model."""
        cfg, last = self.cfg, self.cfg.trainer.steps
        logger = MetricsLogger(self.run_dir, last, cfg.logger.wandb.mode, cfg.logger.wandb.project,
                               OmegaConf.to_container(cfg, resolve=True), progress=cfg.logger.progress)
        evaluates = cfg.eval.enabled and bool(self.eval_prompts)
        history: list[dict[str, float]] = []
        budget, t0 = cfg.trainer.max_minutes * 60, time.perf_counter()
        try:
            if evaluates:
                logger.log(0, self.evaluate() | {"time/wall": time.perf_counter() - t0}, advance=False)
            for step in range(1, last + 1):
                metrics = self.step(step)
                final = step == last or 0 < budget <= time.perf_counter() - t0
                if evaluates and (final or (cfg.eval.every and step % cfg.eval.every == 0)):
                    metrics |= self.evaluate()
                metrics["time/wall"] = time.perf_counter() - t0
                logger.log(step, metrics)
                history.append(metrics)
                stop_if_collapsed(step, metrics, cfg.trainer.max_kl, cfg.trainer.min_entropy, self.checkpoints)
                if final or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
                    self.save_checkpoint(step)
                if signals.pending() is not None and not final:  # SIGTERM/SIGINT: stop at this step boundary
                    raise signals.Stopped(signals.pending())
                if final:
                    break
        finally:
            logger.close()
        if cfg.trainer.export_hf:
            final = ckpt.export_final(self.learners.export_hf, self.run_dir,
                                      "reward model" if self.rm else "policy")
            if self.rm:  # what `reward.models` will check at start-up, checked now
                check_reward_model(RewardModelConfig(path=str(final)), 0, "cpu")
        return history

    def save_checkpoint(self, step: int) -> None:
        state = {"step": step, "loader": self.loader.state_dict(), "rng": ckpt.rng_state(),
                 "metrics": read_metrics(self.run_dir)}

        def write(folder) -> None:
            (folder / self.group_name).mkdir()
            self.learners.save_checkpoint(str(folder / self.group_name))
            torch.save(state, folder / ckpt.DRIVER)

        self.checkpoints.save(step, write, {"fingerprint": self.fingerprint, "groups": [self.group_name]})

    def close(self) -> None:
        for group in (self.learners, self.placement):
            if group is not None:
                group.shutdown()

