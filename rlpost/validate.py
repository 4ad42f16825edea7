"""Checks that types cannot express, run in the driver before any actor starts. Each failure is one line naming
the config field and the fix (`ConfigError`)."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from rlpost.algos import ADVANTAGES, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
from rlpost.config import ConfigError, samples_per_rank
from rlpost.rewards.loader import load_reward_fn

DTYPES = ("float32", "bfloat16", "float16")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    algo, lc, rc, tc = cfg.algo, cfg.learner, cfg.rollout, cfg.trainer
    _require(algo.name == "grpo", f"algo.name={algo.name!r}: this version implements grpo; set algo=grpo")
    _require(algo.group_size >= 2, f"algo.group_size={algo.group_size}: GRPO needs at least 2 completions per "
             "prompt to form a baseline; set algo.group_size>=2")
    ADVANTAGES.get(algo.advantage)
    LOSS_AGGREGATIONS.get(algo.loss_agg)
    POLICY_LOSSES.get(algo.policy_loss)
    KL_ESTIMATORS.get(algo.kl_estimator)
    _require(algo.kl_coef >= 0, f"algo.kl_coef={algo.kl_coef}: must be >= 0 (0 disables the reference model)")
    _require(0 <= algo.clip_low < 1 and algo.clip_high >= 0,
             f"algo.clip_low={algo.clip_low}, algo.clip_high={algo.clip_high}: need 0 <= clip_low < 1, clip_high >= 0")
    _require(algo.epochs >= 1 and algo.num_minibatches >= 1, "algo.epochs and algo.num_minibatches must be >= 1")
    _require(tc.steps >= 1, f"trainer.steps={tc.steps}: must be >= 1")
    _require(tc.prompts_per_step >= 1, f"trainer.prompts_per_step={tc.prompts_per_step}: must be >= 1")
    validate_operations(cfg)

    samples = tc.prompts_per_step * algo.group_size
    _require(samples % algo.num_minibatches == 0,
             f"algo.num_minibatches={algo.num_minibatches} does not divide the {samples} samples per step "
             f"(trainer.prompts_per_step x algo.group_size); pick a divisor of {samples}")
    minibatch = samples // algo.num_minibatches
    _require(lc.num_ranks >= 1, f"learner.num_ranks={lc.num_ranks}: must be >= 1")
    _require(minibatch % lc.num_ranks == 0,
             f"learner.num_ranks={lc.num_ranks} does not divide the mini-batch of {minibatch} samples; "
             "change learner.num_ranks, trainer.prompts_per_step or algo.num_minibatches")
    per_rank = samples_per_rank(tc.prompts_per_step, algo.group_size, algo.num_minibatches, lc.num_ranks)
    _require(lc.micro_batch_size >= 1 and per_rank % lc.micro_batch_size == 0,
             f"learner.micro_batch_size={lc.micro_batch_size} does not divide the {per_rank} samples each rank "
             f"gets per mini-batch; pick a divisor of {per_rank}")
    _require(lc.zero_stage in (0, 1, 2, 3), f"learner.zero_stage={lc.zero_stage}: choose 0, 1, 2 or 3")
    _require(lc.lr > 0, f"learner.lr={lc.lr}: must be > 0")
    _require(lc.lr_schedule in ("constant", "cosine"),
             f"learner.lr_schedule={lc.lr_schedule!r}: choose constant or cosine")
    _require(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r}: choose one of {', '.join(DTYPES)}")

    _require(rc.engine == "hf",
             f"rollout.engine={rc.engine!r}: this version ships the hf engine; set rollout.engine=hf")
    _require(rc.num_engines >= 1, f"rollout.num_engines={rc.num_engines}: must be >= 1")
    _require(rc.temperature >= 0, f"rollout.temperature={rc.temperature}: must be >= 0 (0 = greedy)")
    _require(0 < rc.top_p <= 1, f"rollout.top_p={rc.top_p}: must be in (0, 1]")
    _require(rc.top_k >= 0, f"rollout.top_k={rc.top_k}: must be >= 0 (0 = off)")
    _require(rc.max_new_tokens >= 1, f"rollout.max_new_tokens={rc.max_new_tokens}: must be >= 1")
    _require(rc.batch_size >= 1, f"rollout.batch_size={rc.batch_size}: must be >= 1")

    _require(cfg.cluster.device == "cpu", f"cluster.device={cfg.cluster.device!r}: this version runs on cpu; "
             "set cluster=debug_cpu")
    _require(cfg.sync.transport in ("auto", "gloo"),
             f"sync.transport={cfg.sync.transport!r}: on cpu the transport is gloo; set sync.transport=auto")
    _require(cfg.sync.bucket_mb > 0, f"sync.bucket_mb={cfg.sync.bucket_mb}: must be > 0")
    _require(cfg.sync.timeout_s > 0, f"sync.timeout_s={cfg.sync.timeout_s}: must be > 0")

    rw = cfg.reward
    _require(len(rw.functions) >= 1, "reward.functions is empty; add at least one, e.g. "
             "reward.functions=[{path: rewards/gsm8k.py, name: score}]")
    _require(rw.num_workers >= 1 and rw.num_actors >= 1, "reward.num_workers and reward.num_actors must be >= 1")
    _require(rw.item_timeout_s > 0, f"reward.item_timeout_s={rw.item_timeout_s}: must be > 0")
    for i, spec in enumerate(rw.functions):
        load_reward_fn(spec, i)  # raises ConfigError naming reward.functions[i]


def validate_operations(cfg: DictConfig) -> None:
    """Run folder, checkpointing and evaluation settings."""
    tc, ec = cfg.trainer, cfg.eval
    # A submitted job runs in a throwaway copy of its working dir: a relative run folder would vanish with it.
    _require(os.path.isabs(tc.run_dir) or "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ,
             f"trainer.run_dir={tc.run_dir}: this driver runs as a Ray job, in a temporary copy of its working "
             "dir; set trainer.run_dir to an absolute path on storage every node can reach (rlpost-submit does)")
    _require(tc.save_every >= 0, f"trainer.save_every={tc.save_every}: must be >= 0 (0 = only at the end)")
    _require(tc.keep_checkpoints >= 1, f"trainer.keep_checkpoints={tc.keep_checkpoints}: must be >= 1")
    _require(ec.every >= 0 and ec.limit >= 0 and ec.num_samples >= 0,
             f"eval.every={ec.every}, eval.limit={ec.limit}, eval.num_samples={ec.num_samples}: must be >= 0")
    _require(not ec.num_samples or 1 <= ec.k <= ec.num_samples,
             f"eval.k={ec.k}: must be between 1 and eval.num_samples={ec.num_samples}")
    _require(ec.temperature > 0 or not ec.num_samples,
             f"eval.temperature={ec.temperature}: pass@k samples need a temperature > 0 (or eval.num_samples=0)")
