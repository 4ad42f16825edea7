"""Checks that types cannot express, run in the driver before any actor starts. Each failure is one line naming
the config field and the fix (`ConfigError`)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlpost.algos import (
    ADVANTAGES,
    DPO_LOSSES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    OFF_POLICY_CORRECTIONS,
    PAIR_SELECTORS,
    POLICY_LOSSES,
    REWARD_MODEL_LOSSES,
)
from rlpost.config import PAIR_OBJECTIVES, ConfigError, RLPostConfig, samples_per_rank, train_sequences_per_step
from rlpost.data import resolve_data_path
from rlpost.rewards.loader import load_reward_fn
from rlpost.rewards.manager import accuracy_component, component_labels
from rlpost.rewards.reward_model import check_reward_model
from rlpost.sync.transport import TRANSPORTS

DTYPES = ("float32", "bfloat16", "float16")
OBJECTIVES = ("pg", "dpo", "rm")
BAD_ROW_ACTIONS = ("skip", "stop")
KL_MODES = ("loss", "reward")
# Beyond one step ahead a blocking weight sync buys no more overlap (rlpost/pipeline.py), only older samples.
MAX_STALENESS = 4


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    _validate_keys(cfg)
    algo, lc, rc, tc = cfg.algo, cfg.learner, cfg.rollout, cfg.trainer
    _require(algo.objective in OBJECTIVES,
             f"algo.objective={algo.objective!r}: choose one of {', '.join(OBJECTIVES)} (or pick a preset, algo=...)")
    _require(tc.steps >= 1, f"trainer.steps={tc.steps}: must be >= 1")
    _require(tc.prompts_per_step >= 1, f"trainer.prompts_per_step={tc.prompts_per_step}: must be >= 1")
    _require(algo.epochs >= 1 and algo.num_minibatches >= 1, "algo.epochs and algo.num_minibatches must be >= 1")
    _require(algo.group_size >= 1, f"algo.group_size={algo.group_size}: must be >= 1")
    if algo.offline or algo.objective == "rm":
        _validate_offline(cfg)
    else:  # before anything slow (the default model's first-use conversion, actors): a path that is not there
        resolve_data_path(cfg.data.train_path)
        if cfg.eval.enabled:
            resolve_data_path(cfg.eval.data_path, "eval.data_path")
    if algo.objective == "dpo":
        _validate_dpo(cfg)
    elif algo.objective == "pg":
        _validate_pg(cfg)
    _require(cfg.critic.enabled or cfg.critic.warmup_steps == 0,
             f"critic.warmup_steps={cfg.critic.warmup_steps} without a critic (critic.enabled=false); set it to 0")
    _validate_sampling(cfg)
    _validate_staleness(cfg)
    _validate_batches(cfg, "learner", lc.num_ranks)
    if cfg.critic.enabled:
        _validate_batches(cfg, "critic", cfg.critic.num_ranks)
    validate_operations(cfg)
    _require(lc.zero_stage in (0, 1, 2, 3), f"learner.zero_stage={lc.zero_stage}: choose 0, 1, 2 or 3")
    _require(lc.lr > 0, f"learner.lr={lc.lr}: must be > 0")
    _require(lc.max_tokens_per_micro >= 0,
             f"learner.max_tokens_per_micro={lc.max_tokens_per_micro}: must be >= 0 (0 = micro_batch_size sequences)")
    _require(lc.lr_schedule in ("constant", "cosine"),
             f"learner.lr_schedule={lc.lr_schedule!r}: choose constant or cosine")
    _require(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r}: choose one of {', '.join(DTYPES)}")

    _require(rc.engine in ("hf", "vllm"), f"rollout.engine={rc.engine!r}: choose hf (CPU/debug) or vllm (GPU)")
    _require(rc.num_engines >= 1, f"rollout.num_engines={rc.num_engines}: must be >= 1")
    _require(rc.temperature >= 0, f"rollout.temperature={rc.temperature}: must be >= 0 (0 = greedy)")
    _require(0 < rc.top_p <= 1, f"rollout.top_p={rc.top_p}: must be in (0, 1]")
    _require(rc.top_k >= 0, f"rollout.top_k={rc.top_k}: must be >= 0 (0 = off)")
    _require(rc.max_new_tokens >= 1, f"rollout.max_new_tokens={rc.max_new_tokens}: must be >= 1")
    _require(rc.batch_size >= 1, f"rollout.batch_size={rc.batch_size}: must be >= 1")
    _require(rc.timeout_s >= 0, f"rollout.timeout_s={rc.timeout_s}: must be >= 0 (0 = no limit)")
    _require(rc.max_restarts >= 0, f"rollout.max_restarts={rc.max_restarts}: must be >= 0 (0 = a dead engine ends "
             "the run)")

    _validate_placement(cfg)
    _require(cfg.sync.bucket_mb > 0, f"sync.bucket_mb={cfg.sync.bucket_mb}: must be > 0")
    _require(cfg.sync.timeout_s > 0, f"sync.timeout_s={cfg.sync.timeout_s}: must be > 0")

    rw = cfg.reward
    _require(len(rw.functions) + len(rw.models) >= 1, "reward.functions and reward.models are both empty; add "
             "a reward, e.g. reward.functions=[{path: rewards/gsm8k.py, name: score}]")
    _require(rw.num_workers >= 1 and rw.num_actors >= 1, "reward.num_workers and reward.num_actors must be >= 1")
    _require(rw.item_timeout_s > 0, f"reward.item_timeout_s={rw.item_timeout_s}: must be > 0")
    _require(rw.batch_timeout_s > 0, f"reward.batch_timeout_s={rw.batch_timeout_s}: must be > 0")
    _require(cfg.learner.max_skipped_updates >= 0, f"learner.max_skipped_updates={cfg.learner.max_skipped_updates}: "
             "must be >= 0 (0 = never stop)")
    _validate_collapse_guards(cfg)
    _require(rw.max_abs_score > 0, f"reward.max_abs_score={rw.max_abs_score}: must be > 0 (scores beyond it are "
             "errors)")
    _require(rw.max_worker_memory_mb >= 0, f"reward.max_worker_memory_mb={rw.max_worker_memory_mb}: must be >= 0 "
             "(0 = no limit)")
    _require(rw.max_output_kb >= 0, f"reward.max_output_kb={rw.max_output_kb}: must be >= 0 (0 = no limit)")
    _require(0 <= rw.max_failure_frac <= 1, f"reward.max_failure_frac={rw.max_failure_frac}: must be in [0, 1] "
             "(1 = never stop on failures)")
    for i, spec in enumerate(rw.functions):
        load_reward_fn(spec, i)  # raises ConfigError naming reward.functions[i]
    for i, spec in enumerate(rw.models):
        check_reward_model(spec, i, cfg.cluster.device)
    accuracy_component(rw, component_labels(rw))  # raises on a reward.accuracy that names no component


def unknown_keys(node: dict[str, Any], schema: type = RLPostConfig, prefix: str = "") -> dict[str, list[str]]:
    """The dotted keys of `node` (a plain config tree) that `schema` does not define, each with the options it
    does define there. Hydra refuses such a key without `+`, but `+key=value` adds it, and nothing would read it."""
    fields = typing.get_type_hints(schema)
    found: dict[str, list[str]] = {}
    for key, value in node.items():
        path, kind = f"{prefix}{key}", fields.get(key)
        if kind is None:
            found[path] = list(fields)
        elif dataclasses.is_dataclass(kind) and isinstance(value, dict):
            found |= unknown_keys(value, kind, path + ".")
        elif typing.get_origin(kind) is list and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            for i, entry in enumerate(value if isinstance(value, list) else []):
                if isinstance(entry, dict):
                    found |= unknown_keys(entry, typing.get_args(kind)[0], f"{path}[{i}].")
    return found


def _validate_keys(cfg: DictConfig) -> None:
    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False))
    if unknown:
        key, options = next(iter(unknown.items()))
        parent, _, name = key.rpartition(".")
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        raise ConfigError(f"{key}: not an option of rlpost-train{hint}; a leading + adds no options, every option "
                          "and its default is in rlpost/config.py")


def _validate_placement(cfg: DictConfig) -> None:
    cl, rc, lc = cfg.cluster, cfg.rollout, cfg.learner
    _require(cl.device in ("cpu", "cuda"), f"cluster.device={cl.device!r}: choose cpu or cuda")
    _require(cfg.sync.transport in ("auto", *TRANSPORTS),
             f"sync.transport={cfg.sync.transport!r}: choose auto or one of {', '.join(TRANSPORTS)}")
    k = rc.engines_per_gpu
    _require(k >= 1, f"rollout.engines_per_gpu={k}: must be >= 1")
    _require(k == 1 or (cl.colocate and rc.engine == "vllm"), f"rollout.engines_per_gpu={k} shares a learner GPU "
             "between vLLM engines, which needs cluster.colocate=true and rollout.engine=vllm (NCCL, the split "
             "layout's sync, refuses two ranks on one GPU); set rollout.engines_per_gpu=1")
    share = k * rc.gpu_memory_utilization
    _require(k == 1 or share <= 0.9, f"rollout.engines_per_gpu={k} engines of rollout.gpu_memory_utilization="
             f"{rc.gpu_memory_utilization:g} each take {share:g} of the GPU; keep their product at most 0.9")
    if cl.colocate:  # engines and learner ranks per GPU (the device is checked below)
        _require(rc.tensor_parallel_size == 1 and rc.num_engines == lc.num_ranks * k,
                 f"cluster.colocate=true puts rollout.engines_per_gpu={k} engine(s) on each learner GPU: set "
                 f"rollout.num_engines={lc.num_ranks * k} (learner.num_ranks x rollout.engines_per_gpu) and "
                 "rollout.tensor_parallel_size=1, or use cluster=split")
    if cl.device == "cpu":
        _require(rc.engine == "hf", f"rollout.engine={rc.engine!r} needs GPUs; on cluster.device=cpu use "
                 "rollout.engine=hf (cluster=debug_cpu), or pick cluster=single_gpu / cluster=split")
        _require(cfg.sync.transport in ("auto", "gloo"),
                 f"sync.transport={cfg.sync.transport!r}: on cpu the transport is gloo; set sync.transport=auto")
        _require(not cl.colocate, "cluster.colocate=true shares GPUs; on cluster.device=cpu set it false")
        return
    if not cl.address and not os.environ.get("RAY_ADDRESS"):
        import torch  # a local cluster: this machine's GPUs are the cluster's

        _require(torch.cuda.is_available(), f"cluster={cl.name} needs a GPU but this machine has none (and no "
                 "cluster.address is set); use cluster=debug_cpu, or submit to a GPU cluster")
    if rc.engine == "vllm":
        from rlpost.rollout.vllm_engine import check_vllm

        check_vllm()
    _require(rc.tensor_parallel_size >= 1, f"rollout.tensor_parallel_size={rc.tensor_parallel_size}: must be >= 1")
    _require(0 < rc.gpu_memory_utilization <= 1,
             f"rollout.gpu_memory_utilization={rc.gpu_memory_utilization}: must be in (0, 1]")
    _require(rc.kv_cache_gb >= 0, f"rollout.kv_cache_gb={rc.kv_cache_gb}: must be >= 0 (0 = what "
             "rollout.gpu_memory_utilization leaves)")
    _require(rc.sleep_level in (0, 1, 2), f"rollout.sleep_level={rc.sleep_level}: choose 0, 1 or 2")
    if cl.colocate:
        _require(not cfg.critic.enabled or cfg.critic.num_ranks == lc.num_ranks,
                 f"cluster.colocate=true puts a critic rank beside each learner rank: set critic.num_ranks="
                 f"learner.num_ranks ({lc.num_ranks})")
        _require(cfg.sync.transport in ("auto", "ipc"), f"sync.transport={cfg.sync.transport!r}: colocated "
                 "learner and engines share GPUs, where NCCL refuses two ranks per GPU; set sync.transport=auto")
    else:
        _require(cfg.sync.transport in ("auto", "nccl"), f"sync.transport={cfg.sync.transport!r}: split GPU "
                 "groups sync over NCCL; set sync.transport=auto")


def _validate_pg(cfg: DictConfig) -> None:
    algo, critic = cfg.algo, cfg.critic
    traits = ADVANTAGES.traits(algo.advantage)  # also rejects an unknown name
    LOSS_AGGREGATIONS.get(algo.loss_agg)
    POLICY_LOSSES.get(algo.policy_loss)
    KL_ESTIMATORS.get(algo.kl_estimator)
    OFF_POLICY_CORRECTIONS.get(algo.off_policy_correction)
    _require(algo.tis_cap > 0, f"algo.tis_cap={algo.tis_cap}: the importance-weight cap must be > 0 (e.g. 2)")
    _require(algo.old_logprobs in ("learner", "rollout"),
             f"algo.old_logprobs={algo.old_logprobs!r}: choose learner (a forward pass) or rollout (the engine's)")
    _require(algo.old_logprobs == "learner" or algo.off_policy_correction == "none",
             f"algo.old_logprobs=rollout with algo.off_policy_correction={algo.off_policy_correction}: the correction "
             "weighs the learner's old logprobs against the engine's, so they must be the learner's; set "
             "algo.old_logprobs=learner")
    _require(not algo.skip_tied_groups or traits.get("group_baseline"), f"algo.skip_tied_groups=true with "
             f"algo.advantage={algo.advantage}: only a group baseline (grpo, dr_grpo, rloo) gives a tied group zero "
             "advantages; set algo.skip_tied_groups=false")
    _require(not algo.skip_tied_groups or algo.kl_coef == 0, f"algo.skip_tied_groups=true with algo.kl_coef="
             f"{algo.kl_coef}: the KL term gives tied groups a gradient too; set algo.kl_coef=0 or "
             "algo.skip_tied_groups=false")
    rc = cfg.rollout
    _require(algo.old_logprobs == "learner" or (rc.top_p == 1 and rc.top_k == 0),
             f"algo.old_logprobs=rollout with rollout.top_p={rc.top_p} rollout.top_k={rc.top_k}: vLLM's logprobs are "
             "taken after that truncation, so they are not the policy's; set rollout.top_p=1 rollout.top_k=0 or "
             "algo.old_logprobs=learner")
    _require(algo.group_size >= 2 or not traits.get("group_baseline"),
             f"algo.group_size={algo.group_size}: algo.advantage={algo.advantage} needs at least 2 completions per "
             "prompt to form its group baseline; set algo.group_size>=2")
    _require(critic.enabled or not traits.get("needs_values"),
             f"algo.advantage={algo.advantage} needs a critic but critic.enabled=false; set critic.enabled=true "
             "(algo=ppo does) or choose a critic-free estimator")
    _require(traits.get("needs_values") or not critic.enabled,
             f"critic.enabled=true but algo.advantage={algo.advantage} uses no values; set algo.advantage=gae or "
             "critic.enabled=false")
    if critic.enabled:
        _require(critic.num_ranks >= 1, f"critic.num_ranks={critic.num_ranks}: must be >= 1")
        _require(critic.lr > 0, f"critic.lr={critic.lr}: must be > 0")
        _require(critic.value_clip >= 0, f"critic.value_clip={critic.value_clip}: must be >= 0 (0 = off)")
        _require(0 <= critic.warmup_steps < cfg.trainer.steps,
                 f"critic.warmup_steps={critic.warmup_steps}: must be >= 0 and below trainer.steps="
                 f"{cfg.trainer.steps}, or the policy never trains")
    _require(0 <= algo.gamma <= 1 and 0 <= algo.lam <= 1,
             f"algo.gamma={algo.gamma}, algo.lam={algo.lam}: both must be in [0, 1]")
    _require(0 <= algo.clip_low < 1 and algo.clip_high >= 0,
             f"algo.clip_low={algo.clip_low}, algo.clip_high={algo.clip_high}: need 0 <= clip_low < 1, clip_high >= 0")
    _require(algo.clip_c == 0 or algo.clip_c > 1,
             f"algo.clip_c={algo.clip_c}: the dual-clip bound must be > 1 (e.g. 3), or 0 for off")
    _require(algo.kl_coef >= 0, f"algo.kl_coef={algo.kl_coef}: must be >= 0 (0 disables the reference model)")
    _require(algo.kl_mode in KL_MODES, f"algo.kl_mode={algo.kl_mode!r}: choose one of {', '.join(KL_MODES)}")
    _require(algo.kl_target >= 0 and algo.kl_horizon >= 1,
             f"algo.kl_target={algo.kl_target}, algo.kl_horizon={algo.kl_horizon}: need kl_target >= 0 (0 = fixed "
             "coefficient) and kl_horizon >= 1")
    _require(algo.kl_target == 0 or algo.kl_coef > 0,
             f"algo.kl_target={algo.kl_target} adapts algo.kl_coef, which is 0; set algo.kl_coef > 0 as its start")
    _require(0 <= algo.overlong_buffer < 1,
             f"algo.overlong_buffer={algo.overlong_buffer}: a fraction of rollout.max_new_tokens in [0, 1) (0 = off)")
    _require(algo.overlong_penalty >= 0, f"algo.overlong_penalty={algo.overlong_penalty}: must be >= 0")


def _validate_collapse_guards(cfg: DictConfig) -> None:
    """A guard must watch a metric the run logs: otherwise it would silently never fire."""
    tc, algo = cfg.trainer, cfg.algo
    _require(tc.max_kl >= 0, f"trainer.max_kl={tc.max_kl}: must be >= 0 (0 = off)")
    _require(tc.min_entropy >= 0, f"trainer.min_entropy={tc.min_entropy}: must be >= 0 (0 = off)")
    _require(tc.max_kl == 0 or (algo.objective == "pg" and algo.kl_mode == "loss" and algo.kl_coef > 0),
             f"trainer.max_kl={tc.max_kl} watches actor/kl, the loss's KL term, which this config does not compute "
             f"(algo.objective={algo.objective}, algo.kl_mode={algo.kl_mode}, algo.kl_coef={algo.kl_coef}); use it "
             "with algo.objective=pg, algo.kl_mode=loss and algo.kl_coef>0, or set trainer.max_kl=0")
    _require(tc.min_entropy == 0 or algo.objective != "rm", f"trainer.min_entropy={tc.min_entropy} watches the "
             "policy's actor/entropy, and a reward model (algo.objective=rm) has none; set trainer.min_entropy=0")


def _validate_offline(cfg: DictConfig) -> None:
    """Training on a fixed pair file (`rlpost.offline`): dpo or rm, with a readable pair file."""
    algo, pc = cfg.algo, cfg.pairs
    _require(algo.offline, "algo.objective=rm trains on the fixed pair file pairs.path; set algo.offline=true "
             "(algo=reward_model, which rlpost-train-rm uses, does)")
    _require(algo.objective in PAIR_OBJECTIVES, f"algo.offline=true trains on pairs, but algo.objective="
             f"{algo.objective}; choose algo=dpo_offline or algo=reward_model")
    resolve_data_path(pc.path, "pairs.path")
    if pc.eval_path:
        resolve_data_path(pc.eval_path, "pairs.eval_path")
    _require(0 <= pc.eval_fraction < 1, f"pairs.eval_fraction={pc.eval_fraction}: must be in [0, 1) (0 = no "
             "held-out pairs unless pairs.eval_path is set)")
    _require(pc.on_bad_row in BAD_ROW_ACTIONS,
             f"pairs.on_bad_row={pc.on_bad_row!r}: choose one of {', '.join(BAD_ROW_ACTIONS)}")
    _require(not cfg.critic.enabled, f"critic.enabled=true with algo.objective={algo.objective}, which uses no "
             "values; set critic.enabled=false")
    _require(cfg.learner.micro_batch_size % 2 == 0,
             f"learner.micro_batch_size={cfg.learner.micro_batch_size}: a micro-batch holds whole (chosen, rejected) "
             "pairs; make it even")
    if algo.objective == "rm":
        REWARD_MODEL_LOSSES.get(algo.rm_loss)
        _require(cfg.learner.max_tokens_per_micro == 0, f"learner.max_tokens_per_micro="
                 f"{cfg.learner.max_tokens_per_micro}: the reward model's head reads each padded row's last token, "
                 "so its batches are not packed; set learner.max_tokens_per_micro=0")


def _validate_dpo(cfg: DictConfig) -> None:
    algo = cfg.algo
    _require(algo.offline or algo.group_size >= 2, f"algo.group_size={algo.group_size}: online DPO (algo.objective="
             "dpo) needs at least 2 completions per prompt to form a pair; set algo.group_size>=2")
    PAIR_SELECTORS.get(algo.pairs)
    DPO_LOSSES.get(algo.dpo_loss)
    _require(algo.off_policy_correction == "none", f"algo.off_policy_correction={algo.off_policy_correction} "
             "corrects the policy-gradient loss, not DPO's; set algo.off_policy_correction=none")
    _require(not algo.skip_tied_groups, "algo.skip_tied_groups=true: DPO trains on pairs, which never tie; set "
             "algo.skip_tied_groups=false")
    _require(algo.dpo_beta > 0, f"algo.dpo_beta={algo.dpo_beta}: must be > 0")
    _require(algo.kl_coef == 0, f"algo.kl_coef={algo.kl_coef} has no effect with algo.objective=dpo (its KL "
             "strength is algo.dpo_beta); set algo.kl_coef=0")
    _require(not cfg.critic.enabled, "critic.enabled=true with algo.objective=dpo, which uses no values; set "
             "critic.enabled=false")
    _require(cfg.learner.micro_batch_size % 2 == 0,
             f"learner.micro_batch_size={cfg.learner.micro_batch_size}: with algo.objective=dpo a micro-batch holds "
             "whole (chosen, rejected) pairs; make it even")


def _validate_sampling(cfg: DictConfig) -> None:
    algo, tc = cfg.algo, cfg.trainer
    if not algo.dynamic_sampling:
        return
    _require(algo.group_size >= 2, f"algo.dynamic_sampling=true with algo.group_size={algo.group_size}: a single "
             "completion always 'ties' with itself, so every prompt would be dropped; set algo.group_size>=2")
    _require(algo.max_sampled_prompts == 0 or algo.max_sampled_prompts >= tc.prompts_per_step,
             f"algo.max_sampled_prompts={algo.max_sampled_prompts} is below trainer.prompts_per_step="
             f"{tc.prompts_per_step}, the batch dynamic sampling fills; raise it (or 0 = 3 x prompts_per_step)")


def _validate_staleness(cfg: DictConfig) -> None:
    k, algo = cfg.trainer.max_staleness, cfg.algo
    if k == 0:
        return
    _require(0 <= k <= MAX_STALENESS, f"trainer.max_staleness={k}: choose 0 (synchronous) to {MAX_STALENESS}; 1 "
             "gives all the overlap a blocking weight sync allows")
    _require(algo.objective == "pg", f"trainer.max_staleness={k} with algo.objective=dpo: stale DPO pairs are not "
             "corrected; set trainer.max_staleness=0")
    _require(algo.off_policy_correction in ("tis", "mis"), f"trainer.max_staleness={k} trains on samples of an "
             f"older policy; set algo.off_policy_correction=tis (or mis), not {algo.off_policy_correction!r}")
    _require(not algo.dynamic_sampling, f"trainer.max_staleness={k} generates only each step's first round ahead; "
             "set algo.dynamic_sampling=false or trainer.max_staleness=0")
    # Measured (bench/RESULTS.md, 2026-12-03, one H200, Qwen2.5-0.5B): engines awake beside the learner made the
    # step 0.94x as fast as the on-policy loop; two processes' kernels time-slice on one GPU, so the overlap
    # needs the engines on GPUs of their own.
    _require(not cfg.cluster.colocate,
             f"trainer.max_staleness={k} with cluster.colocate=true: engines sharing the learner's GPUs cannot "
             "generate beside training (asleep they do not run; awake, rollout.sleep_level=0, measured 0.94x of the "
             "on-policy step: kernels of two processes time-slice on a GPU); use cluster=split (engines on GPUs of "
             "their own) or trainer.max_staleness=0")


def _validate_batches(cfg: DictConfig, section: str, num_ranks: int) -> None:
    """The step's training sequences must cut into mini-batches, ranks and micro-batches exactly."""
    algo = cfg.algo
    micro = cfg.learner.micro_batch_size
    samples = train_sequences_per_step(cfg)
    what = ("2 x trainer.prompts_per_step" if algo.objective in PAIR_OBJECTIVES
            else "trainer.prompts_per_step x algo.group_size")
    _require(samples % algo.num_minibatches == 0,
             f"algo.num_minibatches={algo.num_minibatches} does not divide the {samples} training sequences per "
             f"step ({what}); pick a divisor of {samples}")
    minibatch = samples // algo.num_minibatches
    _require(num_ranks >= 1, f"{section}.num_ranks={num_ranks}: must be >= 1")
    _require(minibatch % num_ranks == 0,
             f"{section}.num_ranks={num_ranks} does not divide the mini-batch of {minibatch} sequences; "
             f"change {section}.num_ranks, trainer.prompts_per_step or algo.num_minibatches")
    per_rank = samples_per_rank(samples, algo.num_minibatches, num_ranks)
    _require(micro >= 1 and per_rank % micro == 0,
             f"learner.micro_batch_size={micro} does not divide the {per_rank} sequences each {section} rank "
             f"gets per mini-batch; pick a divisor of {per_rank}")


def validate_operations(cfg: DictConfig) -> None:
    """Run folder, checkpointing and evaluation settings."""
    tc, ec = cfg.trainer, cfg.eval
    # A submitted job runs in a throwaway copy of its working dir: a relative run folder would vanish with it.
    _require(os.path.isabs(tc.run_dir) or "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ,
             f"trainer.run_dir={tc.run_dir}: this driver runs as a Ray job, in a temporary copy of its working "
             "dir; set trainer.run_dir to an absolute path on storage every node can reach (rlpost-submit does)")
    _require(tc.save_every >= 0, f"trainer.save_every={tc.save_every}: must be >= 0 (0 = only at the end)")
    _require(tc.keep_checkpoints >= 1, f"trainer.keep_checkpoints={tc.keep_checkpoints}: must be >= 1")
    _require(tc.final_checkpoint or tc.export_hf, "trainer.final_checkpoint=false with trainer.export_hf=false "
             "would keep nothing of the trained model; set one of them true")
    _require(ec.every >= 0 and ec.limit >= 0 and ec.num_samples >= 0,
             f"eval.every={ec.every}, eval.limit={ec.limit}, eval.num_samples={ec.num_samples}: must be >= 0")
    _require(not ec.num_samples or 1 <= ec.k <= ec.num_samples,
             f"eval.k={ec.k}: must be between 1 and eval.num_samples={ec.num_samples}")
    _require(ec.temperature > 0 or not ec.num_samples,
             f"eval.temperature={ec.temperature}: pass@k samples need a temperature > 0 (or eval.num_samples=0)")
    _require(not ec.enabled or ec.every <= tc.steps,
             f"eval.every={ec.every} is larger than trainer.steps={tc.steps}, so it would never fire; set "
             f"eval.every <= {tc.steps} (0 = only at the start and the end)")
    _require(tc.max_minutes >= 0, f"trainer.max_minutes={tc.max_minutes}: must be >= 0 (0 = no time budget)")
