"""Operations settings: the full-size GSM8K preset's batch arithmetic, checkpoint/eval/run-folder validation,
and the CLI's one-line refusal to resume under an incompatible config (before any actor starts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make

from rlpost.checkpoint import CheckpointManager
from rlpost.config import ConfigError
from rlpost.validate import validate

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_full_size_preset_divides_for_common_learner_sizes(ranks: int) -> None:
    # rollout.engine=hf / cluster.device=cpu only stand in for the GPU path this branch does not validate yet.
    cfg = make("experiment=gsm8k_grpo", "model.path=/models/x", f"learner.num_ranks={ranks}", "rollout.engine=hf")
    assert cfg.trainer.prompts_per_step * cfg.algo.group_size == 1024 and cfg.learner.lr == 1e-6
    assert cfg.eval.limit == 0 and cfg.trainer.save_every == 20
    validate(cfg)


def test_preset_without_model_path_names_the_field() -> None:
    from rlpost.models import resolve_model_path

    cfg = make("experiment=gsm8k_grpo")
    with pytest.raises(ConfigError, match=r"^model.path: <set model.path=.*> is not a folder"):
        resolve_model_path(cfg.model.path)


@pytest.mark.parametrize("override, message", [
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0: must be >= 1"),
    ("trainer.save_every=-1", "trainer.save_every=-1: must be >= 0"),
    ("eval.k=8", "eval.k=8: must be between 1 and eval.num_samples=2"),  # the debug preset samples 2
    ("eval.temperature=0", "eval.temperature=0.0: pass@k samples need a temperature > 0"),
    ("eval.every=4", r"^eval.every=4 is larger than trainer.steps=3, so it would never fire; set eval.every <= 3"),
    ("trainer.max_minutes=-1", "trainer.max_minutes=-1.0: must be >= 0"),
    ("trainer.final_checkpoint=false trainer.export_hf=false",
     "^trainer.final_checkpoint=false with trainer.export_hf=false would keep nothing of the trained model"),
])
def test_operations_validation(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(make("experiment=gsm8k_grpo_debug", *override.split()))


def test_relative_run_dir_refused_inside_a_ray_job(monkeypatch) -> None:
    cfg = make("experiment=gsm8k_grpo_debug", "trainer.run_dir=runs/x")
    validate(cfg)  # run directly, a relative run folder is fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a submitted job's driver
    with pytest.raises(ConfigError, match="trainer.run_dir=runs/x: this driver runs as a Ray job"):
        validate(cfg)
    validate(make("experiment=gsm8k_grpo_debug", "trainer.run_dir=/abs/x"))


@pytest.mark.slow
def test_resume_with_another_model_is_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    """Through the real CLI: the checkpoint says which model it was trained from; a run naming another one stops
    with exit code 2 and one line on stderr, before Ray starts, and the checkpoint is left as it was."""
    import torch

    from rlpost.checkpoint import fingerprint

    run_dir = tmp_path / "run"
    other_model = tmp_path / "other_model"
    other_model.mkdir()  # same weights, different model.path: still refused
    for f in Path(tiny_model_dir).iterdir():
        (other_model / f.name).symlink_to(f)
    cfg = make("experiment=gsm8k_grpo_debug", f"model.path={tiny_model_dir}")
    manager = CheckpointManager(str(run_dir), keep=2)
    saved = manager.save(2, lambda folder: torch.save({"step": 2}, folder / "driver.pt"),
                         {"fingerprint": fingerprint(cfg, tiny_model_dir), "groups": ["policy"]})
    before = sorted((p.name, p.stat().st_size) for p in saved.rglob("*"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "127.0.0.1:1"}  # Ray must not even be tried
    out = subprocess.run([sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug",
                          f"model.path={other_model}", f"trainer.run_dir={run_dir}", "trainer.resume=auto",
                          "logger.wandb.mode=disabled"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"rlpost: error: trainer.resume: checkpoint {saved} does not fit this config")
    assert f"model.path was '{tiny_model_dir}', now '{other_model}'" in lines[0]
    assert sorted((p.name, p.stat().st_size) for p in saved.rglob("*")) == before


def test_eval_subset_larger_than_the_test_set_is_one_line(tiny_model_dir: str) -> None:
    from rlpost.eval import Evaluator
    from rlpost.models import load_tokenizer

    cfg = make("experiment=gsm8k_grpo_debug", "eval.limit=1320")  # GSM8K test has 1,319 problems
    with pytest.raises(ConfigError, match=r"^eval.limit=1320 is larger than eval.data_path='gsm8k:test', which has "
                                          r"1319 rows; set eval.limit <= 1319"):
        Evaluator(cfg, load_tokenizer(tiny_model_dir))


def test_smollm2_format_recipe_logs_the_format_share() -> None:
    cfg = make("experiment=gsm8k_grpo_smollm2_format", "model.path=/models/x", "learner.num_ranks=1")
    assert [f["path"] for f in cfg.reward.functions] == ["rewards/gsm8k.py", "rewards/format.py"]
    assert cfg.reward.functions[1]["style"] == "hash" and cfg.trainer.steps == 60
    validate(cfg)


@pytest.mark.parametrize("experiment", ["gsm8k_grpo_qwen05b", "gsm8k_ppo_qwen05b", "gsm8k_online_dpo_qwen05b"])
def test_qwen05b_recipes_compose_and_divide(experiment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-H200 recipes: same sample budget per step (512 completions) and time budget; batch sizes divide.
    Validated in the placement they are written for (one GPU, learner and engines colocated), as a job submitted
    to a GPU cluster from this machine: the GPU check is the cluster's, and vLLM is the GPU machine's install."""
    import rlpost.rollout.vllm_engine

    monkeypatch.setattr(rlpost.rollout.vllm_engine, "check_vllm", lambda: None)
    cfg = make(f"experiment={experiment}", "model.path=/models/x", "cluster=single_gpu",
               "cluster.address=ray://head:10001")
    assert cfg.rollout.num_engines == cfg.rollout.engines_per_gpu == 2
    assert cfg.trainer.prompts_per_step * cfg.algo.group_size == 512
    assert cfg.trainer.max_minutes == 20 and cfg.eval.max_new_tokens == 512 and cfg.eval.limit == 256
    assert cfg.critic.enabled == (experiment == "gsm8k_ppo_qwen05b")
    validate(cfg)
