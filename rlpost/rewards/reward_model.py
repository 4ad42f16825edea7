"""Reward models: a Hugging Face sequence-classification model (one output) scores each (prompt, completion).

`RewardModelScorer` is the body of the Ray actors that serve one `reward.models` entry (placed by
`rlpost.cluster.groups.RewardModelGroup`: `num_gpus` each on a GPU cluster, CPU in debug).

Choices:
- The RM reads the conversation the policy had: the chat messages of the prompt (system prompt if set, the user
  turn with the instruction) plus the completion as the assistant turn, rendered with the RM's own chat template.
  An RM is trained on its own template, which need not be the policy's, so the messages travel, not the text.
- Batched by tokens: sequences are sorted by length and packed while (sequences x longest) <= `batch_tokens`, so
  a batch of short answers is one forward and a long one never pads its neighbours far; a sequence longer than
  `batch_tokens` goes alone. Right padding; the model's own head pools the last non-pad token (HF's
  `*ForSequenceClassification` convention, which needs `pad_token_id` in the model config: taken from the
  tokenizer when missing).
- Normalisation (`normalize: true`) uses one running mean/std per RM, kept by the driver-side group rather than
  in each actor, so every actor's scores are normalised by the same statistics. The batch being scored is folded
  in first, so the first batch is normalised by its own mean and std.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlpost.config import ConfigError, RewardModelConfig

DTYPES = ("float32", "bfloat16", "float16")


def model_label(spec: RewardModelConfig) -> str:
    """The RM's short name for logging: its folder's name (the caller de-duplicates against other labels)."""
    return Path(spec.path).name or "reward_model"


def check_reward_model(spec: RewardModelConfig, index: int, device: str) -> None:
    """Start-up checks that need no forward pass (no GPU work): sizes, the folder, the head, the tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    field = f"reward.models[{index}]"
    if spec.num_actors < 1 or spec.batch_tokens < 1:
        raise ConfigError(f"{field}: num_actors={spec.num_actors} and batch_tokens={spec.batch_tokens} must be >= 1")
    if spec.num_gpus < 0 or (device == "cpu" and spec.num_gpus > 0):
        raise ConfigError(f"{field}.num_gpus={spec.num_gpus}: on cluster.device={device} it must be "
                          f"{'0 (CPU)' if device == 'cpu' else '>= 0'}")
    if spec.dtype not in DTYPES:
        raise ConfigError(f"{field}.dtype={spec.dtype!r}: choose one of {', '.join(DTYPES)}")
    folder = Path(spec.path).expanduser()
    if not spec.path or not (folder / "config.json").is_file():
        raise ConfigError(f"{field}.path: '{spec.path}' is not a Hugging Face model folder (no config.json); "
                          "point it at a local sequence-classification model")
    config = AutoConfig.from_pretrained(folder)
    if config.num_labels != 1:
        raise ConfigError(f"{field}.path: {folder} has {config.num_labels} output labels; a reward model has "
                          "one (num_labels=1, e.g. a *ForSequenceClassification trained as an RM)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{field}.path: the tokenizer of {folder} has no chat template; add a "
                          "chat_template.jinja so the RM sees the conversation as it was trained to")
    if config.pad_token_id is None and tokenizer.pad_token_id is None:
        raise ConfigError(f"{field}.path: neither the config nor the tokenizer of {folder} sets a pad token; "
                          "set pad_token_id in its config.json")


def conversation_ids(tokenizer, messages: list[list[dict]], completions: list[str]) -> list[list[int]]:
    """Each conversation, completion as the assistant turn, through the tokenizer's chat template: what a reward
    model reads, in training (`rlpost.offline`) and in scoring alike. The template writes every special token, so
    the tokenizer must add none of its own."""
    texts = [tokenizer.apply_chat_template([*m, {"role": "assistant", "content": c}], tokenize=False)
             for m, c in zip(messages, completions, strict=True)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def token_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, shortest first, each with len(batch) * longest <= batch_tokens
    (a sequence longer than `batch_tokens` alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > batch_tokens:  # sorted: lengths[i] is the longest
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class RunningMeanStd:
    """Mean and (population) standard deviation of every score seen so far, merged batch by batch
    (Chan et al.'s parallel update, exact for any batch sizes)."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.count, self.mean, self.m2, self.eps = 0, 0.0, 0.0, eps

    def update(self, values: list[float]) -> None:
        if not values:
            return
        n = len(values)
        mean = sum(values) / n
        m2 = sum((v - mean) ** 2 for v in values)
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def normalize(self, values: list[float]) -> list[float]:
        return [(v - self.mean) / max(self.std, self.eps) for v in values]


class RewardModelScorer:
    """One reward model on one device: `score(messages, completions)` -> one float per completion."""

    def __init__(self, path: str, dtype: str = "float32", batch_tokens: int = 8192, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval().requires_grad_(False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id = self.model.config.pad_token_id
        self.batch_tokens = batch_tokens

    def ready(self) -> bool:
        return True

    def tokenize(self, messages: list[list[dict]], completions: list[str]) -> list[list[int]]:
        return conversation_ids(self.tokenizer, messages, completions)

    def score(self, messages: list[list[dict]], completions: list[str]) -> list[float]:
        import torch

        ids = self.tokenize(messages, completions)
        scores = [0.0] * len(ids)
        with torch.no_grad():
            for batch in token_batches([len(x) for x in ids], self.batch_tokens):
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    attention[row, :len(ids[i])] = 1
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention.to(self.device)).logits
                for row, i in enumerate(batch):
                    scores[i] = float(logits[row, 0])
        return scores
