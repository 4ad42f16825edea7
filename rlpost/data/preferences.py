"""Preference pairs from disk: (prompt, chosen, rejected) rows checked one by one, and their tokens.

Rows come from `load_rows` (jsonl read by hand, json/parquet/`datasets` folders through `datasets`). A row is bad
when a key is missing, a completion is empty, chosen == rejected, or its prompt renders to more than
`data.max_prompt_tokens` tokens; each bad row gets one line naming its number (1-based, in file order) and is
skipped and counted, or ends the run (`pairs.on_bad_row`).

Tokens. A prompt renders through the model's chat template with the generation prompt, as `build_prompts` renders
online training's prompts. A completion is the rest of the conversation rendered with it as the assistant turn
(`conversation_ids`). The policy (DPO) gets the completion up to and including its first stop token, where a
sampling engine stops; the reward model reads the whole rendering, exactly what `RewardModelScorer` feeds it when
the RM later scores live completions. A completion cut by the sampler's token limit (`chosen_truncated` /
`rejected_truncated` true in its row, as `python -m rlpost.pairs` writes them) never stopped, so the policy gets it
without the end-of-turn token the template closes every turn with: otherwise DPO would train "stop here" into
the chosen side and "do not stop here" into the rejected one, at places the sampler never stopped. Completions
are text, not token ids, so a pair file is model-independent and `python -m rlpost.pairs` output is read like any
user's file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rlpost.config import ConfigError, PairsConfig
from rlpost.data.prompts import load_rows
from rlpost.models import require_chat_template
from rlpost.rewards.reward_model import conversation_ids

MAX_LINES = 10  # bad rows reported one per line; the rest only counted in the summary


@dataclasses.dataclass
class PreferencePair:
    row: int  # 1-based row number in its file
    messages: list[dict[str, str]]  # the prompt as chat messages
    chosen: str
    rejected: str
    prompt_ids: list[int]  # the chat-templated prompt, generation prompt included
    chosen_truncated: bool = False  # cut by the sampler's token limit: it has no end of turn
    rejected_truncated: bool = False


class BadRow(ValueError):
    """What is wrong with one row (the caller adds the file and row number)."""


def parse_row(row: dict[str, Any], pc: PairsConfig) -> tuple[list[dict[str, str]], str, str, bool, bool]:
    """(messages, chosen, rejected, chosen_truncated, rejected_truncated) of a row, or BadRow saying what is wrong
    with it. The prompt is the user turn as a string, or a list of {role, content} chat messages (e.g. with a
    system prompt); the truncation flags are optional (false: the completion ended where it ends)."""
    for which in ("prompt", "chosen", "rejected"):
        key = getattr(pc, f"{which}_key")
        if key not in row:
            raise BadRow(f"no '{key}' key (its keys: {sorted(row)}); set pairs.{which}_key to the field holding it")
    prompt = row[pc.prompt_key]
    if isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    elif (isinstance(prompt, list) and prompt
          and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt)):
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise BadRow(f"'{pc.prompt_key}' is empty or neither a string nor a list of {{role, content}} messages")
    chosen, rejected = row[pc.chosen_key], row[pc.rejected_key]
    for key, value in ((pc.chosen_key, chosen), (pc.rejected_key, rejected)):
        if not isinstance(value, str) or not value.strip():
            raise BadRow(f"'{key}' is an empty completion")
    if chosen == rejected:
        raise BadRow(f"'{pc.chosen_key}' and '{pc.rejected_key}' are the same text, which ranks nothing")
    flags = []
    for key in ("chosen_truncated", "rejected_truncated"):
        flag = row.get(key, False)
        if not isinstance(flag, bool):
            raise BadRow(f"'{key}' is {flag!r}; it must be true or false (or left out: false)")
        flags.append(flag)
    return messages, chosen, rejected, *flags


def load_preference_pairs(path: str, field: str, tokenizer, pc: PairsConfig, max_prompt_tokens: int
                          ) -> tuple[list[PreferencePair], int]:
    """The good pairs of the file at `path` (named `field` in messages) and the number of bad rows skipped."""
    require_chat_template(tokenizer)
    rows = load_rows(path, field)
    parsed: list[tuple[int, list[dict[str, str]], str, str, bool, bool]] = []
    bad: list[str] = []

    def reject(n: int, problem: str) -> None:
        if pc.on_bad_row == "stop":
            raise ConfigError(f"{field}: row {n}: {problem}; fix or delete the row, or set pairs.on_bad_row=skip")
        if len(bad) < MAX_LINES:
            print(f"[rlpost] {field}: row {n} skipped: {problem}", flush=True)
        bad.append(problem)

    for n, row in enumerate(rows, start=1):
        try:
            parsed.append((n, *parse_row(row, pc)))
        except BadRow as err:
            reject(n, str(err))
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for _, m, *_ in parsed]
    all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    pairs = []
    for (n, messages, chosen, rejected, *truncated), ids in zip(parsed, all_ids, strict=True):
        if len(ids) > max_prompt_tokens:
            reject(n, f"the prompt is {len(ids)} tokens, over data.max_prompt_tokens={max_prompt_tokens}")
        else:
            pairs.append(PreferencePair(n, messages, chosen, rejected, list(ids), *truncated))
    if bad:
        more = f" ({len(bad) - MAX_LINES} not shown)" if len(bad) > MAX_LINES else ""
        print(f"[rlpost] {field}: skipped {len(bad)} of {len(rows)} rows{more}; pairs.on_bad_row=stop makes a bad "
              "row an error", flush=True)
    if not pairs:
        raise ConfigError(f"{field}: none of the {len(rows)} rows of {path} is a usable pair (first problem: "
                          f"{bad[0]})")
    return pairs, len(bad)


def split_held_out(pairs: list[PreferencePair], fraction: float, seed: int
                   ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out): the held-out pairs are the last `fraction` of a permutation seeded by `seed`, at least
    one when the fraction is > 0 and there are two pairs or more."""
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    order = np.random.default_rng([seed, 2]).permutation(len(pairs)).tolist()
    n_eval = min(max(1, round(fraction * len(pairs))), len(pairs) - 1)
    return [pairs[i] for i in order[:-n_eval]], [pairs[i] for i in order[-n_eval:]]


def pair_sequences(tokenizer, pairs: list[PreferencePair], stop_ids: set[int] | None
                   ) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids) of every pair's chosen then rejected sequence (2 per pair, in order).

    The prompt is the longest common prefix of the generation prompt and the rendered conversation (the whole
    generation prompt for templates that, like ChatML, render the assistant turn after it); with `stop_ids` the
    completion is cut after its first stop token, or before it for a truncated completion (the policy), without
    it the rest of the rendering is kept (the reward model, which reads the conversation as its scorer renders
    it, truncated or not)."""
    if not pairs:
        return [], []
    messages = [p.messages for p in pairs for _ in range(2)]
    full = conversation_ids(tokenizer, messages, [c for p in pairs for c in (p.chosen, p.rejected)])
    prompts, completions = [], []
    sides = [(p.prompt_ids, cut_short) for p in pairs for cut_short in (p.chosen_truncated, p.rejected_truncated)]
    for (prompt, cut_short), ids in zip(sides, full, strict=True):
        cut = 0
        while cut < min(len(prompt), len(ids) - 1) and prompt[cut] == ids[cut]:
            cut += 1
        completion = ids[cut:]
        if stop_ids is not None:
            stop = next((i for i, t in enumerate(completion) if t in stop_ids), None)
            if stop is not None:
                completion = completion[:stop] if cut_short else completion[:stop + 1]
        prompts.append(ids[:cut])
        completions.append(completion)
    return prompts, completions
