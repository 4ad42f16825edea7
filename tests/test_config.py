"""Config: Hydra composition (schema rejects unknown keys and wrong types), `validate` one-line errors, and the
DeepSpeed config / LR schedule builders."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from helpers import make
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from rlpost.config import ConfigError
from rlpost.learner.ds_config import build_ds_config, lr_multiplier
from rlpost.rewards.manager import RewardResult, accuracy_component, component_labels
from rlpost.validate import validate


def test_debug_experiment_composes_and_validates() -> None:
    cfg = make()
    assert cfg.experiment == "gsm8k_grpo_debug"
    assert cfg.algo.name == "grpo" and cfg.cluster.device == "cpu"
    validate(cfg)


def test_overrides_apply() -> None:
    cfg = make("algo.group_size=8", "trainer.steps=20")
    assert cfg.algo.group_size == 8 and cfg.trainer.steps == 20


def test_unknown_key_rejected() -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        make("algo.group_sise=8")


def test_wrong_type_rejected() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make("trainer.steps=many")


@pytest.mark.parametrize("overrides, field", [
    (["algo.group_size=1"], "algo.group_size"),
    (["trainer.prompts_per_step=3", "algo.group_size=3"], "learner.num_ranks"),  # 9 samples, 2 ranks
    (["learner.micro_batch_size=3"], "learner.micro_batch_size"),  # 4 per rank
    (["algo.num_minibatches=3"], "algo.num_minibatches"),  # 8 samples
    (["learner.zero_stage=4"], "learner.zero_stage"),
    (["algo.advantage=nope"], "algo.advantage"),
    (["algo.loss_agg=nope"], "algo.loss_agg"),
    (["rollout.top_p=0"], "rollout.top_p"),
    (["rollout.max_restarts=-1"], "rollout.max_restarts"),
    (["rollout.timeout_s=-5"], "rollout.timeout_s"),
    (["model.dtype=float8"], "model.dtype"),
    (["reward.functions=[{path: rewards/missing.py, name: score}]"], "reward.functions[0]"),
    (["reward.functions=[{path: rewards/gsm8k.py, name: nope}]"], "reward.functions[0]"),
    # incompatible algorithm combinations
    (["algo.objective=ppo"], "algo.objective"),
    (["algo.advantage=gae"], "critic.enabled"),  # gae without a critic
    (["algo=ppo", "algo.advantage=grpo"], "critic.enabled"),  # a critic nothing reads
    (["critic.warmup_steps=2"], "critic.warmup_steps"),  # warm-up without a critic
    (["algo=ppo", "critic.warmup_steps=3"], "critic.warmup_steps"),  # the policy would never train (3 steps)
    (["algo=ppo", "critic.num_ranks=3"], "critic.num_ranks"),
    (["algo.advantage=rloo", "algo.group_size=1", "trainer.prompts_per_step=4"], "algo.group_size"),
    (["algo=online_dpo", "algo.group_size=1", "trainer.prompts_per_step=8"], "algo.group_size"),
    (["algo=online_dpo", "algo.kl_coef=0.1"], "algo.kl_coef"),
    (["algo=online_dpo", "learner.micro_batch_size=1"], "learner.micro_batch_size"),
    (["algo=online_dpo", "algo.pairs=all"], "algo.pairs"),
    (["algo=dapo", "algo.max_sampled_prompts=1"], "algo.max_sampled_prompts"),  # cap below the batch (2 prompts)
    (["algo.dynamic_sampling=true", "algo.group_size=1", "algo.advantage=reinforce_pp",
      "trainer.prompts_per_step=8"], "algo.dynamic_sampling"),
    (["algo.kl_mode=penalty"], "algo.kl_mode"),
    (["algo.kl_coef=0", "algo.kl_target=6"], "algo.kl_target"),
    (["algo.clip_c=0.5"], "algo.clip_c"),
    (["algo.policy_loss=ppo2"], "algo.policy_loss"),
    (["algo.off_policy_correction=is"], "algo.off_policy_correction"),
    (["algo.off_policy_correction=tis", "algo.tis_cap=0"], "algo.tis_cap"),
    (["algo.tis_cap=-1"], "algo.tis_cap"),
    (["algo.old_logprobs=engine"], "algo.old_logprobs='engine'"),
    (["algo.old_logprobs=rollout", "algo.off_policy_correction=tis"], "set algo.old_logprobs=learner"),
    (["algo.old_logprobs=rollout", "rollout.top_k=50"], "rollout.top_k=50: vLLM's logprobs"),
    (["algo.skip_tied_groups=true"], "algo.kl_coef=0.04: the KL term"),  # grpo's preset keeps a k3 KL
    (["algo.skip_tied_groups=true", "algo.kl_coef=0", "algo.advantage=reinforce_pp"], "only a group baseline"),
    (["algo=online_dpo", "algo.skip_tied_groups=true"], "DPO trains on pairs"),
    (["learner.max_tokens_per_micro=-1"], "learner.max_tokens_per_micro"),
    (["algo=online_dpo", "algo.off_policy_correction=mis"], "algo.off_policy_correction"),
    (["algo.lam=1.5"], "algo.lam"),
    (["trainer.max_staleness=-1"], "trainer.max_staleness"),
    (["trainer.max_staleness=5", "algo.off_policy_correction=tis"], "trainer.max_staleness"),
    (["trainer.max_staleness=1"], "algo.off_policy_correction=tis"),  # stale samples need the correction
    (["algo=online_dpo", "trainer.max_staleness=1"], "algo.objective=dpo"),
    (["algo=dapo", "trainer.max_staleness=1", "algo.off_policy_correction=tis"], "algo.dynamic_sampling"),
    (["cluster=single_gpu", "trainer.max_staleness=1", "algo.off_policy_correction=tis"], "cluster=split"),
    (["cluster=single_gpu", "trainer.max_staleness=1", "algo.off_policy_correction=tis", "rollout.sleep_level=0"],
     "0.94x"),
    (["algo.overlong_buffer=1.5"], "algo.overlong_buffer"),
    (["rollout.engines_per_gpu=0"], "rollout.engines_per_gpu=0: must be >= 1"),
    (["rollout.engines_per_gpu=2", "rollout.num_engines=2"], "needs cluster.colocate=true"),  # debug_cpu
    (["cluster=single_gpu", "rollout.engines_per_gpu=3"], "keep their product at most 0.9"),  # 3 x 0.35
    (["cluster=single_gpu", "learner.num_ranks=2", "rollout.engines_per_gpu=2", "rollout.gpu_memory_utilization=0.3"],
     "set rollout.num_engines=4 (learner.num_ranks x rollout.engines_per_gpu)"),  # the preset's count is one GPU's
    (["reward.accuracy=nope"], "reward.accuracy"),  # names no component: refused before any actor
    # keys the schema does not know, added with Hydra's `+` (which it suggests for them)
    (["+data.path=/tmp/x.jsonl"], "data.path: not an option of rlpost-train (did you mean data.train_path?)"),
    (["+algo.kl_coeff=0.1"], "algo.kl_coeff"),
    (["+seed=1"], "seed"),
    (["reward.models=[{path: /tmp/rm}]", "+reward.models.0.norm=true"], "reward.models[0].norm"),
])
def test_validate_names_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make(*overrides))
    message = str(err.value)
    assert field in message and "\n" not in message


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "ppo", "online_dpo", "dapo"])
def test_every_algorithm_preset_composes_and_validates(algo: str) -> None:
    cfg = make(f"algo={algo}")
    validate(cfg)
    assert cfg.algo.name == algo
    assert cfg.critic.enabled == (algo == "ppo")
    assert cfg.algo.objective == ("dpo" if algo == "online_dpo" else "pg")


def test_accuracy_is_the_named_component_else_the_total() -> None:
    """The shipped check decides correctness when it is configured; a user's reward used alone scores by its
    total (> 0 is correct) with `reward.accuracy` left at its default; a name given explicitly must exist."""
    cfg = make()
    assert accuracy_component(cfg.reward, component_labels(cfg.reward)) == "gsm8k"
    own = "reward.functions=[{path: tests/rewards_for_tests.py, name: text_length}]"
    alone = make(own)
    validate(alone)
    assert component_labels(alone.reward) == ["rewards_for_tests"]
    assert accuracy_component(alone.reward, component_labels(alone.reward)) is None
    named = make(own, "reward.accuracy=rewards_for_tests")
    assert accuracy_component(named.reward, component_labels(named.reward)) == "rewards_for_tests"
    result = RewardResult(total=[0.5, 0.0, -1.0], components={"a": [0.0, 1.0, 1.0]}, errors=0, timeouts=0)
    assert result.correct("a") == [False, True, True] and result.correct(None) == [True, False, False]


@pytest.mark.slow
def test_cli_bad_input_is_one_line_before_any_actor(tmp_path) -> None:
    """The console entry point turns a ConfigError into one stderr line and exit code 2 (no Ray started)."""
    proc = subprocess.run([sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug",
                           "algo.group_size=1", f"trainer.run_dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("rlpost: error: algo.group_size=1"), proc.stderr


@pytest.mark.slow
def test_cli_missing_data_path(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug",
                           f"data.train_path={tmp_path}/nope.jsonl", f"trainer.run_dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "data.train_path" in proc.stderr.strip().splitlines()[-1]


def test_missing_eval_data_is_one_line_at_validation(tmp_path) -> None:
    """Data paths are checked before anything slow (the default model's first-use conversion, the actors)."""
    with pytest.raises(ConfigError, match=r"^eval.data_path: .*nope.jsonl does not exist; point eval.data_path at"):
        validate(make(f"eval.data_path={tmp_path}/nope.jsonl"))
    validate(make(f"eval.data_path={tmp_path}/nope.jsonl", "eval.enabled=false"))  # not read: not checked


def test_ds_config_batch_arithmetic() -> None:
    cfg = build_ds_config(zero_stage=3, micro_batch_size=2, grad_accum_steps=4, world_size=2, grad_clip=1.0,
                          dtype="bfloat16")
    assert cfg["train_batch_size"] == 16
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"] == {"enabled": True}
    assert "bf16" not in build_ds_config(0, 1, 1, 1, 1.0, "float32")


def test_lr_schedule_values() -> None:
    # warm-up over 4 steps: 1/4, 2/4, 3/4, 4/4 of the peak
    assert [lr_multiplier(s, 4, 10, "constant", 0.1) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # cosine from step 0 (no warm-up) over 11 steps: peak at 0, min_ratio at 10, halfway at 5
    assert lr_multiplier(0, 0, 11, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(5, 0, 11, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_multiplier(10, 0, 11, "cosine", 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_multiplier(0, 0, 10, "linear", 0.1)


def test_off_policy_correction_needs_the_learners_old_logprobs() -> None:
    from rlpost.config import needs_old_logprobs

    assert not needs_old_logprobs(make().algo)  # on-policy grpo: the first update's own logprobs serve
    assert needs_old_logprobs(make("algo.off_policy_correction=tis").algo)
    assert needs_old_logprobs(make("algo.num_minibatches=2").algo)  # the policy moves within the batch
    # the engine's sampled-token logprobs stand in: no forward pass, for mini-batches and the samples' KL alike
    assert not needs_old_logprobs(make("algo.num_minibatches=2", "algo.old_logprobs=rollout").algo)
    assert not needs_old_logprobs(make("algo.kl_mode=reward", "algo.old_logprobs=rollout").algo)
