"""Rewards inside the real debug loop on CPU (local Ray cluster, DeepSpeed ranks, HF engines): a reward model
served by its own Ray actor beside the verifier workers, plug-ins with extra metrics, and the stop when a
plug-in fails on most of a batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_e2e import TESTS, debug_cfg, run_and_check
from test_reward_model import build_tiny_rm

from rlpost.config import ConfigError
from rlpost.rewards.manager import RewardFailureError
from rlpost.trainer import Trainer
from rlpost.validate import validate

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]
WEIGHTS = {"gsm8k": 1.0, "rewards_for_tests": 1.0, "format": 0.1, "length": 0.5, "tiny-rm": 0.5}


def test_reward_model_and_plugins_in_the_loop(tiny_model_dir: str, tmp_path) -> None:
    rm_dir = build_tiny_rm(tmp_path / "tiny-rm", tiny_model_dir)
    run_dir = str(tmp_path / "run")
    cfg = debug_cfg(tiny_model_dir, run_dir, "learner.zero_stage=0",
                    "reward.functions=[{path: rewards/gsm8k.py}, "
                    f"{{path: {TESTS / 'rewards_for_tests.py'}, name: text_length}}, "
                    "{path: rewards/format.py, weight: 0.1}, {path: rewards/length.py, weight: 0.5, max_length: 60, "
                    "buffer: 30}]",
                    f"reward.models=[{{path: {rm_dir}, weight: 0.5, normalize: true, batch_tokens: 512}}]",
                    # Evaluation scores through the same reward stack, the reward model (which needs the chat
                    # messages) included: it crashed at step 0 when evaluation left the messages out.
                    "eval.enabled=true", "eval.limit=2", "eval.num_samples=2", "eval.k=2")
    run_and_check(cfg, tiny_model_dir, run_dir)

    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and {"eval/pass@1", "eval/pass@2", "eval/maj@2"} <= set(rows[0])
    rows = rows[1:]
    for row in rows:
        for key in ["reward/tiny-rm", "reward/tiny-rm/raw", "reward/format/hash", "reward/format/boxed",
                    "reward/length/overlong"]:
            assert row.get(key) is not None, key
        # The total is the weighted sum of every component, the reward model's included.
        assert row["reward/mean"] == pytest.approx(sum(w * row[f"reward/{c}"] for c, w in WEIGHTS.items()),
                                                   abs=1e-5)
        assert row["reward/errors"] == row["reward/timeouts"] == 0
    # Normalised by running statistics that start with the first batch: its mean is 0, the raw mean is not.
    assert rows[0]["reward/tiny-rm"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0]["reward/tiny-rm/raw"] != pytest.approx(0.0, abs=1e-4)


def test_dry_call_failure_stops_the_start(tiny_model_dir: str, tmp_path) -> None:
    """A plug-in that always returns 2 values stops `Trainer.start` with the dry call's one line, made by the
    reward actor as soon as it is up. The first batch has 2 prompts, so it is the call on the first prompt alone
    (the way training calls it) that catches it."""
    plugin = tmp_path / "two.py"
    plugin.write_text("def wrong_len(prompts, completions, **_):\n    return [0.0, 0.0]\n")
    run_dir = str(tmp_path / "run")
    cfg = debug_cfg(tiny_model_dir, run_dir, "learner.num_ranks=1",
                    f"reward.functions=[{{path: rewards/gsm8k.py}}, {{path: {plugin}, name: wrong_len}}]")
    validate(cfg)
    trainer = Trainer(cfg, tiny_model_dir, run_dir)
    try:
        with pytest.raises(ConfigError, match=r"^reward\.functions\[1\] \(two\): the dry call on the first prompt "
                                              r"alone returned 2 values for 1 completion; it must return"):
            trainer.start()
    finally:
        trainer.close()


def test_broken_plugin_stops_the_run(tiny_model_dir: str, tmp_path) -> None:
    """It passes the start-up dry call but fails on every real completion: the run stops at step 1 with one line
    naming the function, before any training on error scores, and its failing samples are in the run folder."""
    run_dir = str(tmp_path / "run")
    cfg = debug_cfg(tiny_model_dir, run_dir, "learner.num_ranks=1", "rollout.num_engines=1",
                    f"reward.functions=[{{path: {TESTS / 'rewards_for_tests.py'}, name: final_number}}]")
    validate(cfg)
    trainer = Trainer(cfg, tiny_model_dir, run_dir)
    trainer.start()
    try:
        with pytest.raises(RewardFailureError, match=r"^reward: 8 of 8 items failed in reward function "
                           r"'rewards_for_tests', more than reward\.max_failure_frac=0\.5 \(first error: IndexError"):
            trainer.fit()
    finally:
        trainer.close()
    failures = [json.loads(line) for line in Path(run_dir, "reward_failures.jsonl").read_text().splitlines()]
    assert failures and all(f["step"] == 1 and f["error"].startswith("IndexError") for f in failures)
    assert not Path(run_dir, "metrics.jsonl").exists() or not Path(run_dir, "metrics.jsonl").read_text()
