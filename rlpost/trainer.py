"""The RL step, algorithm-agnostic, read top to bottom:

    prompts -> rollout (engines) -> rewards (verifier workers) -> advantages (pure fn, here)
            -> update (learner ranks: ref logprobs, policy loss, optimizer) -> weight sync -> metrics

The driver holds no model: it owns the data, the tokenizer (to decode completions for the rewards) and the
loop; everything heavy is a Ray actor behind the groups in `rlpost.cluster.groups`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from rlpost import checkpoint as ckpt
from rlpost.algos import ADVANTAGES
from rlpost.cluster.groups import LearnerGroup, RewardGroup, RolloutGroup, WeightSync
from rlpost.cluster.ray_cluster import init_ray
from rlpost.config import ConfigError
from rlpost.data import PromptLoader, build_prompts, load_rows, resolve_data_path
from rlpost.eval import Evaluator
from rlpost.learner.actor import MiniBatch, TrainItem
from rlpost.metrics import MetricsLogger
from rlpost.report import read_metrics
from rlpost.rewards.manager import RewardResult
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
        """Everything that can fail on bad input (data, tokenizer, chat template) happens before any actor."""
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
        self.evaluator = Evaluator(cfg, self.tokenizer) if cfg.eval.enabled else None
        self.checkpoints = ckpt.CheckpointManager(run_dir, cfg.trainer.keep_checkpoints)
        self.fingerprint = ckpt.fingerprint(cfg, model_path)
        self.start_step = 0  # the last finished step (a resumed run continues after it)
        self.resume_from: Path | None = None
        self.resume_state: dict = {}
        self.resume_groups: list[str] = []
        # Learner groups whose state a checkpoint holds, by name (a critic group registers as "critic").
        self.checkpoint_groups: dict[str, LearnerGroup] = {}
        self.cluster_resources: dict[str, float] = {}

    def start(self) -> None:
        cfg = self.cfg
        plain = OmegaConf.to_container(cfg, resolve=True)
        total_optimizer_steps = cfg.trainer.steps * cfg.algo.num_minibatches * cfg.algo.epochs
        needed = cfg.learner.num_ranks + cfg.rollout.num_engines + cfg.reward.num_actors
        init_ray(cfg.cluster.address, cfg.cluster.num_cpus or max(needed, os.cpu_count() or 1))
        self.rewards = RewardGroup(OmegaConf.to_object(cfg.reward), cfg.cluster.device)
        self.rollout = RolloutGroup(plain, self.model_path)
        self.learners = LearnerGroup(plain, self.model_path, total_optimizer_steps)
        transport = choose_transport(cfg.sync.transport, cfg.cluster.device, colocated=False)
        self.sync = WeightSync(self.learners, self.rollout, transport, cfg.sync.bucket_mb, cfg.sync.timeout_s)
        self.checkpoint_groups["policy"] = self.learners
        self.cluster_resources = ray.cluster_resources()
        if self.evaluator is not None and cfg.reward.accuracy not in self.rewards.labels:
            raise ConfigError(f"reward.accuracy={cfg.reward.accuracy!r} is not one of the reward components "
                              f"{self.rewards.labels}; evaluation scores with it: set reward.accuracy or "
                              "eval.enabled=false")

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
        timings["time/generate"] = time.perf_counter() - t

        t = time.perf_counter()
        texts = self.tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
        rewards = self.rewards.score([p.text for p in batch for _ in range(group)], texts,
                                     [p.columns for p in batch for _ in range(group)])
        timings["time/reward"] = time.perf_counter() - t
        self._record_failures(step, rewards)

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
        for group in (getattr(self, name, None) for name in ("rewards", "rollout", "learners")):
            if group is not None:
                group.shutdown()

    def fit(self) -> list[dict[str, float]]:
        """Train from `start_step + 1` to `trainer.steps`: evaluate at the start, every `eval.every` steps and at
        the end; checkpoint every `trainer.save_every` steps and at the end; export the final policy."""
        cfg, last = self.cfg, self.cfg.trainer.steps
        logger = MetricsLogger(self.run_dir, last, cfg.logger.wandb.mode, cfg.logger.wandb.project,
                               OmegaConf.to_container(cfg, resolve=True), progress=cfg.logger.progress,
                               start_step=self.start_step)
        history = [{k: v for k, v in row.items() if k != "step"}
                   for row in self.resume_state.get("metrics", []) if row["step"] > 0]
        try:
            if self.start_step == 0 and self.evaluator is not None:
                logger.log(0, self.evaluator.run(self.rollout, self.rewards, 0), advance=False)
            for step in range(self.start_step + 1, last + 1):
                metrics = self.step(step)
                if self.evaluator is not None and self.evaluator.due(step, last):
                    metrics.update(self.evaluator.run(self.rollout, self.rewards, step))
                logger.log(step, metrics)
                history.append(metrics)
                if step == last or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
                    self.save_checkpoint(step)
        finally:
            logger.close()
        if cfg.trainer.export_hf:
            self.export_hf()
        return history

    # ---- checkpoints (layout and atomicity: rlpost.checkpoint) -------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        state = {"step": step, "loader": self.loader.state_dict(), "rng": ckpt.rng_state(),
                 "metrics": read_metrics(self.run_dir)}

        def write(folder: Path) -> None:
            for name, group in self.checkpoint_groups.items():
                (folder / name).mkdir()
                group.save_checkpoint(str(folder / name))
            torch.save(state, folder / ckpt.DRIVER)

        return self.checkpoints.save(step, write, {"fingerprint": self.fingerprint,
                                                   "groups": sorted(self.checkpoint_groups)})

    def prepare_resume(self, path: Path) -> None:
        """Before any actor starts: the checkpoint is complete, fits this config, and its driver state loads."""
        meta = ckpt.verify(path)
        ckpt.check_compatible(path, meta["fingerprint"], self.fingerprint)
        state = ckpt.load_driver_state(path)
        try:
            self.loader.load_state_dict(state["loader"])
        except ValueError as err:
            raise ckpt.CheckpointError(f"trainer.resume: {err}") from None
        self.resume_from, self.resume_state, self.resume_groups = path, state, meta["groups"]

    def restore(self) -> None:
        """After `start`: every group loads its state, the engines get the loaded weights, the driver continues
        its RNG streams and its metrics record where the checkpoint left them."""
        path, state = self.resume_from, self.resume_state
        missing = sorted(set(self.checkpoint_groups) - set(self.resume_groups))
        if missing:
            raise ckpt.CheckpointError(f"trainer.resume: checkpoint {path} has no state for {missing} (it holds "
                                       f"{self.resume_groups}); start fresh with trainer.resume=null")
        for name, group in self.checkpoint_groups.items():
            try:
                group.load_checkpoint(str(path / name))
            except Exception as err:
                raise ckpt.CheckpointError(f"trainer.resume: checkpoint {path} is corrupt: the {name} group cannot "
                                           f"load it ({ckpt.describe_error(err)}); delete that folder to resume from "
                                           "an older one") from None
        self.sync.sync()
        ckpt.set_rng_state(state["rng"])
        self.start_step = state["step"]
        # The record continues from the checkpoint: rows a killed run logged after it are replayed identically.
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in state["metrics"])
        print(f"[rlpost] resumed from {path} at step {self.start_step}", flush=True)

    def export_hf(self) -> Path:
        """The final policy as a plain Hugging Face folder, `<run_dir>/hf_model`. Written to a temp folder and
        renamed, so `hf_model` never holds a partial export."""
        final, tmp = Path(self.run_dir, "hf_model"), Path(self.run_dir, ".tmp-hf_model")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.learners.export_hf(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        print(f"[rlpost] final policy exported to {final}", flush=True)
        return final
