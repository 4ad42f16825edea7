"""End to end on CPU, all real: a local Ray cluster, 2 DeepSpeed ranks (CPU accelerator, gloo), the HF rollout
engine, the gloo weight transport, math-verify reward workers; GSM8K prompts; the tiny random Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlpost.digest import weights_digest
from rlpost.train import compose_config
from rlpost.trainer import Trainer
from rlpost.validate import validate

pytestmark = pytest.mark.integration
TESTS = Path(__file__).parent
REQUIRED_METRICS = [
    "reward/mean", "reward/std", "accuracy", "response/length_mean", "response/length_max",
    "response/truncated_frac", "actor/kl", "actor/entropy", "actor/clip_frac", "actor/grad_norm", "actor/lr",
    "perf/rollout_tokens_per_s", "perf/learner_tokens_per_s", "sync/seconds", "perf/step_seconds",
    "actor/pg_loss", "rollout/logprob_diff", "reward/gsm8k", "reward/rewards_for_tests"]
PHASES = ["time/generate", "time/reward", "time/experience", "time/train", "time/sync"]


def debug_cfg(model_dir: str, run_dir: str, *overrides: str):
    return compose_config([
            "experiment=gsm8k_grpo_debug", f"model.path={model_dir}", f"trainer.run_dir={run_dir}",
            "trainer.steps=2", "trainer.prompts_per_step=2", "algo.group_size=4", "rollout.max_new_tokens=24",
            "learner.micro_batch_size=2", "learner.lr=1e-3", "algo.kl_coef=0.05", "data.limit=64",
            "rollout.num_engines=1",  # each engine costs ~5 s of start-up; test_grpo_zero3_two_engines has two
            "logger.progress=false", "logger.wandb.mode=offline", "eval.enabled=false",
            "trainer.save_every=1",
            "reward.functions=[{path: rewards/gsm8k.py, name: score}, "
            f"{{path: {TESTS / 'rewards_for_tests.py'}, name: text_length}}]",
            *overrides])


def run_and_check(cfg, model_dir: str, run_dir: str, required: list[str] = REQUIRED_METRICS,
                  drift: str | None = "actor/kl") -> list[dict[str, float]]:
    """Run `cfg` for 2 steps and check the loop's invariants; `required` metrics must be logged every step and
    `drift` (a KL of the policy to the reference, if the algorithm logs one) must be positive at step 2."""
    validate(cfg)
    trainer = Trainer(cfg, model_dir, run_dir)
    trainer.start()
    try:
        before = trainer.learners.weights_digest()
        assert trainer.rollout.weights_digests() == [before] * cfg.rollout.num_engines  # same start
        history = trainer.fit()

        # The learner moved, and after the sync every engine holds exactly the learner's weights.
        after = trainer.learners.weights_digest()
        assert after != before
        assert trainer.rollout.weights_digests() == [after] * cfg.rollout.num_engines
        # The exported Hugging Face folder holds exactly the learner's final weights (gathered under ZeRO-3).
        assert weights_digest(load_file(Path(run_dir, "hf_model", "model.safetensors")).items()) == after

        # Engine and learner agree on the logprobs of a fixed completion (fp32).
        prompt = trainer.loader.prompts[0].ids
        completion = trainer.tokenizer("The answer is 42.<|im_end|>", add_special_tokens=False)["input_ids"]
        learner_lp = trainer.learners.score([prompt], [completion])[0]
        engine_lp = trainer.rollout.score([prompt], [completion], cfg.rollout.temperature)[0]
        assert len(learner_lp) == len(completion)
        assert max(abs(a - b) for a, b in zip(learner_lp, engine_lp, strict=True)) < 1e-4

        # Every step: finite losses, the sampling engine agreed with the learner, all metrics present.
        for metrics in history:
            assert all(math.isfinite(metrics[k]) for k in required if k in metrics)
            assert metrics["rollout/logprob_diff"] < 1e-4
        rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["step"] > 0]  # step 0 holds only the first evaluation, when there is one
        assert [r["step"] for r in rows] == [1, 2]
        for row in rows:
            missing = [k for k in required + PHASES if k not in row or row[k] is None]
            assert not missing, missing
        if drift is not None:
            assert rows[1][drift] > 0  # the policy left the reference after the first update

        # Checkpoints load back under this ZeRO stage and rank count: step 1's weights, then step 2's (the last).
        checkpoints = Path(run_dir, "checkpoints")
        trainer.learners.load_checkpoint(str(checkpoints / "step_000001" / "policy"))
        assert trainer.learners.weights_digest() not in (before, after)
        trainer.learners.load_checkpoint(str(checkpoints / "step_000002" / "policy"))
        assert trainer.learners.weights_digest() == after
        return history
    finally:
        trainer.close()


def test_grpo_zero0(local_ray, tiny_model_dir: str, tmp_path) -> None:
    cfg = debug_cfg(tiny_model_dir, str(tmp_path / "run"), "learner.zero_stage=0")
    run_and_check(cfg, tiny_model_dir, str(tmp_path / "run"))


def test_grpo_zero2_minibatches_and_epochs(local_ray, tiny_model_dir: str, tmp_path) -> None:
    """Two optimizer steps per rollout, twice over: old logprobs come from a learner forward, the ratio moves
    off 1 within the step, and clipping engages (lr is large on purpose)."""
    cfg = debug_cfg(tiny_model_dir, str(tmp_path / "run"), "learner.zero_stage=2", "algo.num_minibatches=2",
                    "algo.epochs=2", "learner.micro_batch_size=1", "learner.lr=3e-3")
    history = run_and_check(cfg, tiny_model_dir, str(tmp_path / "run"))
    assert max(m["actor/clip_frac"] for m in history) > 0


def test_grpo_zero1(local_ray, tiny_model_dir: str, tmp_path) -> None:
    """Two mini-batches whose old logprobs are the engine's (algo.old_logprobs=rollout): no learner forward for
    them, and the second mini-batch's ratio still moves off 1 (lr is large on purpose)."""
    cfg = debug_cfg(tiny_model_dir, str(tmp_path / "run"), "learner.zero_stage=1", "algo.num_minibatches=2",
                    "algo.old_logprobs=rollout", "learner.micro_batch_size=1", "learner.lr=3e-3")
    history = run_and_check(cfg, tiny_model_dir, str(tmp_path / "run"))
    assert max(m["actor/clip_frac"] for m in history) > 0


def test_grpo_zero3_two_engines(local_ray, tiny_model_dir: str, tmp_path) -> None:
    cfg = debug_cfg(tiny_model_dir, str(tmp_path / "run"), "learner.zero_stage=3", "rollout.num_engines=2",
                    "sync.bucket_mb=0.5")
    run_and_check(cfg, tiny_model_dir, str(tmp_path / "run"))


def test_ppo_critic_group_zero3_two_ranks(local_ray, tiny_model_dir: str, tmp_path) -> None:
    """PPO: the critic (its own group, 2 ranks, ZeRO-3 like the policy) gives values in the experience phase and
    trains on the GAE returns; 2 epochs x 2 mini-batches; the KL is a reward penalty, measured as kl/sequence,
    whose coefficient the adaptive controller lowers while the KL is below its target."""
    cfg = debug_cfg(tiny_model_dir, str(tmp_path / "run"), "algo=ppo", "algo.group_size=4", "learner.zero_stage=3",
                    "critic.num_ranks=2", "critic.lr=1e-3", "learner.micro_batch_size=1", "algo.kl_target=6")
    required = [k for k in REQUIRED_METRICS if k != "actor/kl"] + [
        "kl/sequence", "critic/value_loss", "critic/grad_norm", "critic/clip_frac", "critic/values"]
    history = run_and_check(cfg, tiny_model_dir, str(tmp_path / "run"), required, drift="kl/sequence")
    assert history[1]["critic/value_loss"] != history[0]["critic/value_loss"]
    assert history[1]["kl/coef"] < history[0]["kl/coef"] == 0.05


def test_online_dpo_zero2_two_ranks(local_ray, tiny_model_dir: str, tmp_path) -> None:
    """Online DPO: pairs from each step's own samples, the reference loaded although algo.kl_coef is 0, pairs
    kept whole across 2 ranks and micro-batches of one pair."""
    cfg = debug_cfg(tiny_model_dir, str(tmp_path / "run"), "algo=online_dpo", "algo.group_size=4",
                    "algo.kl_coef=0", "learner.zero_stage=2")
    required = ["reward/mean", "dpo/loss", "dpo/margin", "dpo/accuracy", "actor/grad_norm", "actor/entropy",
                "rollout/logprob_diff", "dpo/distinct_pairs"]
    history = run_and_check(cfg, tiny_model_dir, str(tmp_path / "run"), required, drift=None)
    assert history[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
