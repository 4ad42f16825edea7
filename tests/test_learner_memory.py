"""The co-resident start-up check's floor of a training step's memory, by hand (rlpost/learner/memory.py)."""

from __future__ import annotations

import pytest

from rlpost.config import RunError
from rlpost.learner.memory import GB, check_step_fits, step_memory_floor, tokens_per_micro


def cfg(**learner) -> dict:
    return {"learner": {"micro_batch_size": 32, "max_tokens_per_micro": 0, "gradient_checkpointing": False,
                        **learner},
            "data": {"max_prompt_tokens": 256}, "rollout": {"max_new_tokens": 384, "gpu_memory_utilization": 0.85,
                                                           "sleep_level": 0}}


def test_tokens_per_micro_is_rows_times_length_or_the_packing_budget() -> None:
    assert tokens_per_micro(cfg()) == 32 * 640
    assert tokens_per_micro(cfg(max_tokens_per_micro=8192)) == 8192


def test_floor_by_hand() -> None:
    # 10 parameters, 3 tokens, vocabulary 7, hidden 4, 2 layers:
    # grads 2*10 = 20, logits and their gradient 4*3*7 = 84, activations 16*3*4*2 = 384 (2*3*4*2 = 48 checkpointed)
    assert step_memory_floor(10, 3, 7, 4, 2, gradient_checkpointing=False) == 20 + 84 + 384
    assert step_memory_floor(10, 3, 7, 4, 2, gradient_checkpointing=True) == 20 + 84 + 48


def test_qwen05b_recipe_fits_beside_a_third_of_an_h200_but_not_beside_most_of_it() -> None:
    # Qwen2.5-0.5B shapes: 630M parameters as converted, vocabulary 151,936, hidden 896, 24 layers; micro 32 x 640.
    need = step_memory_floor(630_000_000, 32 * 640, 151_936, 896, 24, False)
    assert 1.2e9 + 12.4e9 < need < 1.3e9 + 12.5e9 + 7.1e9  # grads + logits + activations ~ 20.7 GB
    check_step_fits(cfg(), 630_000_000, 151_936, 896, 24, free_bytes=80 * GB)
    with pytest.raises(RunError) as err:
        check_step_fits(cfg(), 630_000_000, 151_936, 896, 24, free_bytes=10 * GB)
    line = str(err.value)
    assert "\n" not in line and "needs at least 19." in line and "10.0 GB are free" in line
    assert "rollout.gpu_memory_utilization=0.85" in line and "rollout.sleep_level=2" in line
