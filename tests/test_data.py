"""Prompt datasets: loading, chat-templating and the seeded, resumable prompt loader."""

import json

import pytest

from rlpost.config import ConfigError
from rlpost.data import Prompt, PromptLoader, build_prompts, load_rows, resolve_data_path

INSTRUCTION = "Put the final answer after '####'."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# paths and rows


def test_aliases_resolve_to_shipped_gsm8k():
    train = resolve_data_path("gsm8k")
    assert train == resolve_data_path("gsm8k:train")
    assert train.endswith("gsm8k/train.jsonl")
    assert resolve_data_path("gsm8k:test").endswith("gsm8k/test.jsonl")
    rows = load_rows("gsm8k:test")
    assert len(rows) == 1319
    assert set(rows[0]) == {"question", "answer"} and "####" in rows[0]["answer"]


def test_missing_path_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.eval_path: .*nope\.jsonl does not exist"):
        resolve_data_path(str(tmp_path / "nope.jsonl"), field="data.eval_path")
    with pytest.raises(ConfigError, match=r"^data\.train_path: \(empty\)"):
        resolve_data_path("")


def test_jsonl_rows_skip_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ['{"question": "a", "answer": 1}', "", "  ", '{"question": "b"}'])
    assert load_rows(path) == [{"question": "a", "answer": 1}, {"question": "b"}]


def test_malformed_jsonl_row_names_field_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"question": "a"}', "", '{"question": "b",'])
    with pytest.raises(ConfigError) as err:
        load_rows(path, field="data.eval_path")
    msg = str(err.value)
    assert msg.startswith("data.eval_path: ") and path in msg and "line 3 " in msg and "\n" not in msg


def test_jsonl_row_must_be_an_object(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", ['{"question": "a"}', "[1, 2]"])
    with pytest.raises(ConfigError, match="line 2 is a JSON list, not an object"):
        load_rows(path)


def test_empty_file_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ConfigError, match="has no rows"):
        load_rows(path)


def test_json_parquet_arrow_and_folder_via_datasets(tmp_path):
    import datasets

    rows = [{"question": "q1", "answer": "#### 1"}, {"question": "q2", "answer": "#### 2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    arrow = next((tmp_path / "folder").glob("*.arrow"))

    for path in ("d.json", "d.parquet", "folder", "dict", arrow):
        assert load_rows(str(tmp_path / path)) == rows, path


def test_unreadable_files_give_one_line_errors(tmp_path):
    (tmp_path / "d.csv").write_text("question\nq\n")
    with pytest.raises(ConfigError, match="unsupported extension"):
        load_rows(str(tmp_path / "d.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ConfigError) as err:
        load_rows(str(tmp_path / "bad.parquet"))
    assert str(err.value).startswith("data.train_path: could not read") and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# prompts


def test_build_prompts_renders_chat_and_tokenizes(tokenizer):
    rows = [{"question": "What is 2 + 3?", "answer": "#### 5", "id": 7}]
    prompts, dropped = build_prompts(rows, tokenizer, "question", INSTRUCTION, "", max_prompt_tokens=256)
    assert dropped == 0 and len(prompts) == 1
    p = prompts[0]
    assert f"What is 2 + 3?\n\n{INSTRUCTION}" in p.text
    assert p.text.endswith("<|im_start|>assistant\n")
    assert p.ids == tokenizer(p.text, add_special_tokens=False)["input_ids"]
    assert p.ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # default system, user, assistant
    assert p.columns == {"answer": "#### 5", "id": 7}


def test_system_prompt_and_no_instruction(tokenizer):
    rows = [{"question": "Hi?"}]
    prompts, _ = build_prompts(rows, tokenizer, "question", "", "Be terse.", max_prompt_tokens=256)
    assert prompts[0].text.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert "<|im_start|>user\nHi?<|im_end|>" in prompts[0].text


def test_long_prompts_are_dropped_and_counted(tokenizer):
    rows = [{"question": "short"}, {"question": "long " * 200}, {"question": "also short"}]
    prompts, dropped = build_prompts(rows, tokenizer, "question", "", "", max_prompt_tokens=64)
    assert dropped == 1 and [p.columns for p in prompts] == [{}, {}]
    assert all(len(p.ids) <= 64 for p in prompts)


def test_all_prompts_dropped_names_max_prompt_tokens(tokenizer):
    with pytest.raises(ConfigError, match=r"^data\.max_prompt_tokens: all 1 prompts are longer than 5 tokens"):
        build_prompts([{"question": "hello"}], tokenizer, "question", "", "", max_prompt_tokens=5)


@pytest.mark.parametrize("row", [{"problem": "x", "answer": "1"}, {"question": ""}, {"question": 3}])
def test_bad_prompt_key_names_row_and_keys(tokenizer, row):
    rows = [{"question": "fine"}, row]
    with pytest.raises(ConfigError) as err:
        build_prompts(rows, tokenizer, "question", "", "", max_prompt_tokens=256)
    msg = str(err.value)
    assert msg.startswith("data.prompt_key: row 2 ") and str(sorted(row)) in msg


def test_no_chat_template_names_model_path(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(ConfigError, match=r"^model\.path: .*no chat template; use an instruct/chat model"):
        build_prompts([{"question": "q"}], tok, "question", "", "", max_prompt_tokens=256)


def test_gsm8k_builds_within_default_budget(tokenizer):
    prompts, dropped = build_prompts(load_rows("gsm8k:test"), tokenizer, "question", INSTRUCTION, "", 256)
    assert len(prompts) + dropped == 1319 and dropped < 10
    assert "#### " in prompts[0].columns["answer"]


# ---------------------------------------------------------------------------------------------------------------
# loader


def make_prompts(n):
    return [Prompt(ids=[i], text=str(i)) for i in range(n)]


def order(loader, n):
    return [p.ids[0] for p in loader.next_batch(n)]


def test_epoch_covers_every_prompt_once():
    loader = PromptLoader(make_prompts(10), shuffle=True, seed=0)
    first = order(loader, 4) + order(loader, 6)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert loader.epoch == 1
    assert sorted(order(loader, 10)) == list(range(10)) and loader.epoch == 2


def test_order_depends_on_seed_and_epoch():
    a = order(PromptLoader(make_prompts(20), shuffle=True, seed=1), 40)
    b = order(PromptLoader(make_prompts(20), shuffle=True, seed=1), 40)
    c = order(PromptLoader(make_prompts(20), shuffle=True, seed=2), 40)
    assert a == b and a != c
    assert a[:20] != a[20:]  # reshuffled for the second epoch
    assert order(PromptLoader(make_prompts(5), shuffle=False, seed=1), 7) == [0, 1, 2, 3, 4, 0, 1]


def test_batches_span_epoch_boundaries():
    loader = PromptLoader(make_prompts(3), shuffle=True, seed=0)
    batch = order(loader, 2) + order(loader, 2)
    assert sorted(batch[:3]) == [0, 1, 2] and loader.epoch == 1
    assert len(order(loader, 7)) == 7 and loader.epoch == 3  # 1 + 7 = 8 prompts of epochs 1, 2 and 3


def test_state_dict_round_trip_continues_identically():
    loader = PromptLoader(make_prompts(7), shuffle=True, seed=3)
    order(loader, 12)
    state = loader.state_dict()
    assert state == {"epoch": 1, "position": 5, "num_prompts": 7}
    expected = order(loader, 20)

    resumed = PromptLoader(make_prompts(7), shuffle=True, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
    assert resumed.epoch == 1 and order(resumed, 20) == expected

    with pytest.raises(ValueError, match="checkpoint saw 7 prompts, now there are 6"):
        PromptLoader(make_prompts(6), shuffle=True, seed=3).load_state_dict(state)
