"""The start-up check of a model folder's tokenizer: a chat template, and an EOS that ends an assistant turn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlpost.config import ConfigError
from rlpost.models import load_tokenizer


def copy_of(tiny_model_dir: str, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_good_folder_loads(tiny_model_dir: str) -> None:
    assert load_tokenizer(tiny_model_dir).eos_token == "<|im_end|>"


def test_eos_that_does_not_end_a_turn_is_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    # The transformers 5.17 GGUF mistake: eos read as <|im_start|>, which never ends an assistant turn.
    folder = copy_of(tiny_model_dir, tmp_path)
    edit_json(folder / "tokenizer_config.json", eos_token="<|im_start|>")
    edit_json(folder / "generation_config.json", eos_token_id=1)  # <|im_start|>'s id in SmolLM2's vocabulary
    with pytest.raises(ConfigError, match=r"^model\.path: .* stops generating at \['<\|im_start\|>'\], but its chat "
                                          r"template ends an assistant turn with '<\|im_end\|>'"):
        load_tokenizer(str(folder))


def test_generation_config_eos_alone_suffices(tiny_model_dir: str, tmp_path: Path) -> None:
    """The engines stop at generation_config's eos ids: a right one there makes a wrong tokenizer eos harmless."""
    folder = copy_of(tiny_model_dir, tmp_path)
    edit_json(folder / "tokenizer_config.json", eos_token="<|im_start|>")
    load_tokenizer(str(folder))


def test_missing_chat_template_is_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    folder = copy_of(tiny_model_dir, tmp_path)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    edit_json(folder / "tokenizer_config.json", chat_template=None)
    with pytest.raises(ConfigError, match=r"^model\.path: the tokenizer of .* has no chat template"):
        load_tokenizer(str(folder))


def test_folder_without_tokenizer_is_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    folder = copy_of(tiny_model_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match=r"^model\.path: .* holds no loadable tokenizer") as err:
        load_tokenizer(str(folder))
    assert "\n" not in str(err.value)
