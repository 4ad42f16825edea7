"""Reward-model scorer on CPU: token batching and running normalisation against hand-computed values, the
start-up checks, and the scorer itself on a tiny randomly initialised Llama sequence-classification model."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from rlpost.config import ConfigError, RewardModelConfig
from rlpost.rewards.reward_model import (
    RewardModelScorer,
    RunningMeanStd,
    check_reward_model,
    model_label,
    token_batches,
)


def build_tiny_rm(out_dir: Path, tokenizer_dir: str, num_labels: int = 1) -> str:
    """The tiny test model's shape with a one-output classification head, random weights, its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         num_labels=num_labels, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory) -> str:
    return build_tiny_rm(tmp_path_factory.mktemp("rm") / "tiny-rm", tiny_model_dir)


def test_token_batches():
    # sorted: idx 3 (1), 0 (2), 2 (3), 1 (5), 4 (9); budget 6 tokens: [3, 0, 2] would be 3 x 3 = 9 > 6
    assert token_batches([2, 5, 3, 1, 9], 6) == [[3, 0], [2], [1], [4]]
    assert token_batches([2, 5, 3, 1, 9], 100) == [[3, 0, 2, 1, 4]]
    assert token_batches([4, 4, 4], 8) == [[0, 1], [2]]
    assert token_batches([], 8) == []


def test_running_mean_std():
    stats = RunningMeanStd()
    stats.update([1.0, 2.0, 3.0])
    assert stats.mean == pytest.approx(2.0) and stats.std == pytest.approx(math.sqrt(2 / 3))
    stats.update([4.0])  # all of 1, 2, 3, 4: mean 2.5, population variance 1.25
    assert stats.count == 4 and stats.mean == pytest.approx(2.5) and stats.std == pytest.approx(math.sqrt(1.25))
    assert stats.normalize([2.5, 2.5 + math.sqrt(1.25)]) == pytest.approx([0.0, 1.0])
    constant = RunningMeanStd()
    constant.update([3.0, 3.0])
    assert constant.normalize([3.0]) == [0.0]  # std 0: eps keeps it finite


def test_check_reward_model(tiny_rm_dir, tiny_model_dir, tmp_path):
    check_reward_model(RewardModelConfig(path=tiny_rm_dir), 0, "cpu")
    assert model_label(RewardModelConfig(path=tiny_rm_dir)) == "tiny-rm"
    two_labels = build_tiny_rm(tmp_path / "two", tiny_model_dir, num_labels=2)
    for spec, device, pattern in [
        (RewardModelConfig(path=str(tmp_path / "nope")), "cpu", r"^reward\.models\[1\]\.path: '.*nope' is not a"),
        (RewardModelConfig(path=two_labels), "cpu", r"^reward\.models\[1\]\.path: .* has 2 output labels"),
        (RewardModelConfig(path=tiny_rm_dir, num_gpus=1), "cpu", r"^reward\.models\[1\]\.num_gpus=1: on cluster"),
        (RewardModelConfig(path=tiny_rm_dir, batch_tokens=0), "cpu", r"^reward\.models\[1\]: num_actors=1 and"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            check_reward_model(spec, 1, device)


def test_scorer_batches_match_single_sequences_and_throughput(tiny_rm_dir):
    """Packing several sequences of different lengths into one padded forward gives each the score it gets
    alone (right padding + the head's last-non-pad pooling are consistent); prints sequences/s."""
    questions = [f"What is {i} + {i * 7}? " * (1 + i % 4) for i in range(32)]
    completions = [f"{i} + {i * 7} = {i * 8}.\n#### {i * 8}" * (1 + i % 3) for i in range(32)]
    messages = [[{"role": "user", "content": q}] for q in questions]
    batched = RewardModelScorer(tiny_rm_dir, batch_tokens=4096)
    single = RewardModelScorer(tiny_rm_dir, batch_tokens=1)
    t = time.perf_counter()
    scores = batched.score(messages, completions)
    elapsed = time.perf_counter() - t
    alone = single.score(messages[:8], completions[:8])
    assert scores[:8] == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) > 16  # a random head still tells inputs apart
    # The RM sees the conversation through its chat template, completion as the assistant turn.
    text = batched.tokenizer.decode(batched.tokenize(messages[:1], completions[:1])[0])
    assert text.endswith(f"<|im_start|>user\n{questions[0]}<|im_end|>\n<|im_start|>assistant\n{completions[0]}"
                         "<|im_end|>\n")
    tokens = sum(len(x) for x in batched.tokenize(messages, completions))
    print(f"\nRM scorer (tiny random Llama RM, CPU, batch_tokens=4096): {len(scores) / elapsed:.0f} sequences/s, "
          f"{tokens / elapsed:.0f} tokens/s")
