"""The collapse guards (`trainer.max_kl`, `trainer.min_entropy`): the decision on a step's metrics, the one-line
stop naming the metric, its value, the field and the last checkpoint, and the validation of the fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlpost.checkpoint import CheckpointManager
from rlpost.config import ConfigError, RunError
from rlpost.loop import collapse, stop_if_collapsed
from rlpost.train import compose_config
from rlpost.validate import validate


@pytest.mark.parametrize("metrics, max_kl, min_entropy, expected", [
    ({"actor/kl": 0.5, "actor/entropy": 1.2}, 0.0, 0.0, None),  # both off
    ({"actor/kl": 0.5, "actor/entropy": 1.2}, 0.5, 1.2, None),  # at the limits: not beyond them
    ({"actor/kl": 0.50001, "actor/entropy": 1.2}, 0.5, 0.0, "actor/kl=0.5 is above trainer.max_kl=0.5"),
    ({"actor/kl": 2.25, "actor/entropy": 0.01}, 1.0, 0.1, "actor/kl=2.25 is above trainer.max_kl=1"),  # KL first
    ({"actor/kl": 0.1, "actor/entropy": 0.0125}, 1.0, 0.05, "actor/entropy=0.0125 is below trainer.min_entropy=0.05"),
    ({"actor/entropy": 0.0}, 0.0, 0.05, "actor/entropy=0 is below trainer.min_entropy=0.05"),
    ({}, 1.0, 0.05, None),  # a step without the metrics (no DPO pair, critic warm-up)
    ({"actor/kl": float("nan"), "actor/entropy": float("nan")}, 1.0, 0.05, None),  # the non-finite guard's case
])
def test_collapse_decision(metrics: dict[str, float], max_kl: float, min_entropy: float, expected: str | None
                           ) -> None:
    assert collapse(metrics, max_kl, min_entropy) == expected


def test_stop_names_metric_value_field_and_last_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), keep=2)
    with pytest.raises(RunError) as err:
        stop_if_collapsed(1, {"actor/entropy": 0.001}, 0.0, 0.05, manager)
    assert str(err.value) == ("step 1: actor/entropy=0.001 is below trainer.min_entropy=0.05: the policy collapsed "
                              "and this step is not checkpointed; no checkpoint was written yet; lower learner.lr, "
                              "or move the threshold")
    saved = manager.save(2, lambda folder: (folder / "driver.pt").write_bytes(b"x"), {})
    stop_if_collapsed(3, {"actor/kl": 0.2}, 0.3, 0.0, manager)  # within the limit: nothing happens
    with pytest.raises(RunError) as err:
        stop_if_collapsed(3, {"actor/kl": 0.75}, 0.3, 0.0, manager)
    message = str(err.value)
    assert message.startswith("step 3: actor/kl=0.75 is above trainer.max_kl=0.3: ") and "\n" not in message
    assert f"the last checkpoint is {saved} (trainer.resume=auto continues from it)" in message


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_kl=-1"], "trainer.max_kl=-1.0: must be >= 0 (0 = off)"),
    (["trainer.min_entropy=-0.5"], "trainer.min_entropy=-0.5: must be >= 0 (0 = off)"),
    (["algo=rloo", "trainer.max_kl=0.5"], "trainer.max_kl=0.5 watches actor/kl"),  # KL in the reward, not the loss
    (["algo=dr_grpo", "trainer.max_kl=0.5"], "algo.kl_coef=0.0); use it with"),  # no KL at all
])
def test_guard_fields_are_validated_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["experiment=gsm8k_grpo_debug", *overrides]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_reward_model_has_no_entropy_to_guard(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."}\n')
    with pytest.raises(ConfigError, match=r"trainer.min_entropy=0.1 watches the policy's actor/entropy, and a "
                                          r"reward model \(algo.objective=rm\) has none"):
        validate(compose_config([f"pairs.path={pairs}", "trainer.min_entropy=0.1"], config_name="rm"))


def test_guards_validate_where_their_metric_is_logged() -> None:
    validate(compose_config(["experiment=gsm8k_grpo_debug", "trainer.max_kl=0.5", "trainer.min_entropy=0.1"]))
    validate(compose_config(["experiment=gsm8k_grpo_debug", "algo=online_dpo", "trainer.min_entropy=0.1"]))
