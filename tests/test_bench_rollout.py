"""bench/rollout.py's arithmetic (the GPU run itself is in bench/RESULTS.md): the decode bound by hand, the weight
bytes of the tiny model, the prompts' shape and determinism."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from bench import rollout as bench


def test_decode_bound_by_hand() -> None:
    # 0.27 GB of weights streamed at 2,000 GB/s: 7,407.4 steps/s, so 32 sequences make 237,037 tokens/s.
    assert bench.decode_bound_tokens_per_s(32, 270_000_000, 2000.0) == pytest.approx(237_037.04, rel=1e-6)
    assert bench.decode_bound_tokens_per_s(1, 10**9, 1000.0) == pytest.approx(1000.0)


def test_weight_bytes_of_tiny_model(tiny_model_dir: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings once
    assert bench.weight_bytes(tiny_model_dir) == 2 * params


def test_random_prompts_are_fixed_and_in_vocabulary() -> None:
    prompts = bench.random_prompts(3, 5, 100, seed=1)
    assert len(prompts) == 3 and all(len(p) == 5 for p in prompts)
    assert all(10 <= t < 100 for p in prompts for t in p)
    assert prompts == bench.random_prompts(3, 5, 100, seed=1) and prompts != bench.random_prompts(3, 5, 100, seed=2)
