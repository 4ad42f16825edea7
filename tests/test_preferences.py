"""Offline preference training's fast parts: the preference losses against hand-computed values, pair files with
bad rows, the held-out split, the tokens of a pair, and the config of rlpost-train-rm and algo=dpo_offline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import close

from rlpost.algos import DPO_LOSSES, REWARD_MODEL_LOSSES, bradley_terry_loss, dpo_loss, ipo_loss
from rlpost.config import ConfigError, PairsConfig
from rlpost.data.preferences import PreferencePair, load_preference_pairs, pair_sequences, split_held_out
from rlpost.models import load_tokenizer, stop_token_ids
from rlpost.rewards.reward_model import conversation_ids
from rlpost.train import compose_config
from rlpost.validate import validate


def test_bradley_terry_hand_values():
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(0) = log 2; -log sigmoid(-2) = log(1 + e^2)
    loss, margin = bradley_terry_loss(torch.tensor([1.0, 0.5, -1.0]), torch.tensor([0.0, 0.5, 1.0]))
    close(loss, [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))])
    close(margin, [1.0, 0.0, -2.0])
    assert REWARD_MODEL_LOSSES.get("bradley_terry") is bradley_terry_loss


def test_bradley_terry_gradient_raises_chosen_lowers_rejected():
    chosen, rejected = torch.tensor([0.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].sum().backward()
    close(chosen.grad, [-0.5])  # d/dc -log sigmoid(c - r) = -(1 - sigmoid(0)) = -0.5
    close(rejected.grad, [0.5])


def test_ipo_hand_values():
    # h = (-1 - -2) - (-3 - -2) = 2; beta 0.5: target 1 / (2 * 0.5) = 1, loss (2 - 1)^2 = 1, margin 0.5 * 2 = 1
    args = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    loss, margin = ipo_loss(*args, beta=0.5)
    close(loss, [1.0])
    close(margin, [1.0])
    close(ipo_loss(*args, beta=0.25)[0], [0.0])  # h equals the target 1 / (2 * 0.25) = 2
    # identical completions: h = 0, loss (1 / (2 beta))^2 = 25 at beta 0.1: IPO still pushes them apart
    close(ipo_loss(torch.tensor([-4.0]), torch.tensor([-4.0]), torch.tensor([-4.0]), torch.tensor([-4.0]),
                   beta=0.1)[0], [25.0], atol=1e-4)
    assert DPO_LOSSES.get("ipo") is ipo_loss and DPO_LOSSES.get("sigmoid") is dpo_loss


def test_unknown_preference_loss_names_the_field():
    with pytest.raises(ConfigError, match=r"algo.dpo_loss='hinge'.*ipo, sigmoid"):
        DPO_LOSSES.get("hinge")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
BAD_ROWS = [
    ({"prompt": "Hi", "chosen": "Hello."}, "row 2.*no 'rejected' key.*pairs.rejected_key"),
    ({"prompt": "Hi", "chosen": " ", "rejected": "Hello."}, "row 2.*'chosen' is an empty completion"),
    ({"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}, "row 2.*the same text"),
    ({"prompt": "word " * 300, "chosen": "A.", "rejected": "B."}, r"row 2.*over data.max_prompt_tokens=256"),
    ({**GOOD, "rejected_truncated": "yes"}, "row 2.*'rejected_truncated' is 'yes'; it must be true or false"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_bad_row_skipped_or_stops(row, message, tiny_model_dir, tmp_path, capsys):
    tokenizer = load_tokenizer(tiny_model_dir)
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, row, GOOD])
    pairs, skipped = load_preference_pairs(path, "pairs.path", tokenizer, PairsConfig(), 256)
    assert skipped == 1 and [p.row for p in pairs] == [1, 3]
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "row 2" in line]) == 1, out
    assert "skipped 1 of 3 rows" in out
    with pytest.raises(ConfigError, match=message + ".*pairs.on_bad_row=skip"):
        load_preference_pairs(path, "pairs.path", tokenizer, PairsConfig(on_bad_row="stop"), 256)


def test_pairs_with_own_keys_chat_messages_and_parquet(tiny_model_dir, tmp_path):
    """Custom key names; a prompt given as chat messages (a system turn) is rendered as is; parquet goes through
    `datasets`; a file of nothing but bad rows is one line."""
    import datasets

    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path = str(tmp_path / "pairs.parquet")
    datasets.Dataset.from_list([{"q": messages, "good": "Hello.", "bad": "Go away."}]).to_parquet(path)
    pc = PairsConfig(prompt_key="q", chosen_key="good", rejected_key="bad")
    (pair,), skipped = load_preference_pairs(path, "pairs.path", tokenizer, pc, 256)
    assert skipped == 0 and pair.messages == messages
    assert "Be brief." in tokenizer.decode(pair.prompt_ids)
    with pytest.raises(ConfigError, match="none of the 1 rows.*no 'prompt' key"):
        load_preference_pairs(path, "pairs.path", tokenizer, PairsConfig(), 256)


def test_split_held_out():
    pairs = [PreferencePair(i, [], "a", "b", []) for i in range(20)]
    train, held = split_held_out(pairs, 0.1, seed=0)
    assert len(held) == 2 and len(train) == 18
    assert {p.row for p in train} | {p.row for p in held} == set(range(20))
    assert split_held_out(pairs, 0.1, seed=0) == (train, held)  # seeded
    assert split_held_out(pairs, 0.0, seed=0) == (pairs, [])
    assert len(split_held_out(pairs[:2], 0.9, seed=0)[0]) == 1  # never the whole set


def test_pair_sequences_policy_stops_rm_reads_the_rendering(tiny_model_dir):
    """The RM's sequence is exactly what its scorer feeds it; the policy's completion ends at the stop token."""
    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "user", "content": "Name a colour."}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_ids, add_special_tokens=False)["input_ids"]
    pair = PreferencePair(1, messages, "Blue.", "Seven.", prompt_ids)
    prompts, completions = pair_sequences(tokenizer, [pair], None)
    full = conversation_ids(tokenizer, [messages, messages], ["Blue.", "Seven."])
    assert [p + c for p, c in zip(prompts, completions, strict=True)] == full
    assert prompts == [prompt_ids, prompt_ids]
    stops = stop_token_ids(tiny_model_dir, tokenizer)
    prompts, completions = pair_sequences(tokenizer, [pair], stops)
    assert prompts == [prompt_ids, prompt_ids]
    assert tokenizer.decode(completions[0]) == "Blue.<|im_end|>" and completions[1][-1] in stops


def test_truncated_completion_reaches_the_policy_without_an_end_of_turn(tiny_model_dir, tmp_path):
    """A completion the sampler cut at its token limit never stopped: the policy's tokens of it end without the
    end-of-turn token (DPO must not learn to stop, or not to stop, where nothing stopped); the reward model reads
    the rendering as its scorer will, end of turn included; the flag comes from the row."""
    tokenizer = load_tokenizer(tiny_model_dir)
    path = write_jsonl(tmp_path / "pairs.jsonl", [{**GOOD, "rejected_truncated": True}])
    (pair,), _ = load_preference_pairs(path, "pairs.path", tokenizer, PairsConfig(), 256)
    assert (pair.chosen_truncated, pair.rejected_truncated) == (False, True)
    _, policy = pair_sequences(tokenizer, [pair], stop_token_ids(tiny_model_dir, tokenizer))
    assert [tokenizer.decode(c) for c in policy] == ["Blue.<|im_end|>", "Seven."]
    prompts, rm = pair_sequences(tokenizer, [pair], None)
    full = conversation_ids(tokenizer, [pair.messages] * 2, ["Blue.", "Seven."])
    assert [p + c for p, c in zip(prompts, rm, strict=True)] == full
    assert tokenizer.decode(rm[1]).startswith("Seven.<|im_end|>")


def test_rm_and_dpo_offline_configs(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD])
    rm = compose_config([f"pairs.path={path}"], config_name="rm")
    assert (rm.algo.objective, rm.algo.offline, rm.learner.num_ranks) == ("rm", True, 1)
    validate(rm)
    validate(compose_config(["algo=dpo_offline", f"pairs.path={path}", "algo.dpo_loss=ipo"]))
    refused = {
        "algo.offline=false": "algo.objective=rm trains on the fixed pair file",
        "learner.max_tokens_per_micro=64": "learner.max_tokens_per_micro=64: the reward model's head",
        "pairs.path=/nowhere.jsonl": "pairs.path: /nowhere.jsonl does not exist",
        "pairs.on_bad_row=fix": "pairs.on_bad_row='fix'",
        "algo.rm_loss=hinge": "algo.rm_loss='hinge'",
    }
    for override, message in refused.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            validate(compose_config([f"pairs.path={path}", override], config_name="rm"))
