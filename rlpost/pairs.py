"""`python -m rlpost.pairs OVERRIDES...`: sample preference pairs from a model, for offline DPO and RM training.

    python -m rlpost.pairs model.path=/models/Qwen2.5-Coder-0.5B-Instruct data.train_path=gsm8k data.limit=1000 \
        pairs.samples_per_prompt=8 pairs.path=/data/pairs/gsm8k.jsonl cluster=split rollout.engine=vllm

The overrides are rlpost-train's (the same schema, presets and validation; composed, not run as a Hydra app, so
no run folder is made). The prompts are `data.*`'s, rendered as online training renders them. Each gets
`pairs.samples_per_prompt` completions from the rollout engines (`rollout.*`: temperature, max_new_tokens, ...),
scored by the configured rewards (`reward.functions` and `reward.models`, in their actors, as in training). The
best against the worst completion of each prompt (`algo.pairs`' selector, best_worst by default) becomes one row
of `pairs.path`: the prompt (the user turn, or the chat messages when there is a system prompt), chosen, rejected,
their scores, whether `rollout.max_new_tokens` cut each, the prompt's index, and the dataset row's other columns
(GSM8K's `answer`). Prompts whose completions all tie are skipped and counted. Sampling from the initial policy
means an offline run on these pairs starts from the same information as an online run from that model (the
comparison of arXiv 2503.01067). The file is written to a temp name and renamed, so `pairs.path` is complete or
absent.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rlpost.algos import select_pairs
from rlpost.cluster.engines import RolloutGroup
from rlpost.cluster.groups import Placement, RewardGroup
from rlpost.cluster.ray_cluster import init_ray
from rlpost.config import ConfigError
from rlpost.data import Prompt, build_prompts, load_rows
from rlpost.models import load_tokenizer, resolve_model_path
from rlpost.rollout.engine import SamplingParams
from rlpost.validate import validate


def pair_row(prompt: Prompt, index: int, keys: tuple[str, str, str], texts: tuple[str, str],
             scores: tuple[float, float], truncated: tuple[bool, bool]) -> dict:
    """One output row: the prompt as `rlpost.data.preferences` reads it back, the two completions, their scores,
    whether each was cut by `rollout.max_new_tokens` (then the policy is trained on it without an end of turn,
    as it was sampled), the prompt's index among the prompts sampled (so a subset of prompts selects its pairs),
    and the dataset row's other columns (those whose names the pair keys do not take)."""
    prompt_key, chosen_key, rejected_key = keys
    messages = prompt.messages
    row = {prompt_key: messages[0]["content"] if len(messages) == 1 else messages, chosen_key: texts[0],
           rejected_key: texts[1], "chosen_score": scores[0], "rejected_score": scores[1],
           "chosen_truncated": truncated[0], "rejected_truncated": truncated[1], "prompt_index": index}
    return {**{k: v for k, v in prompt.columns.items() if k not in row}, **row}


def generate_pairs(cfg: DictConfig) -> dict[str, int]:
    """Sample, score and write the pairs; returns the counts (prompts, pairs, ties, pairs with a truncated side)."""
    pc, rc = cfg.pairs, cfg.rollout
    if not pc.path:
        raise ConfigError("pairs.path is empty; set it to the jsonl file the pairs are written to")
    if pc.samples_per_prompt < 2:
        raise ConfigError(f"pairs.samples_per_prompt={pc.samples_per_prompt}: a pair needs at least 2 completions "
                          "per prompt")
    validate(cfg)
    model_path = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(model_path)
    rows = load_rows(cfg.data.train_path)
    rows = rows[:cfg.data.limit] if cfg.data.limit else rows
    prompts, dropped = build_prompts(rows, tokenizer, cfg.data.prompt_key, cfg.data.instruction,
                                     cfg.data.system_prompt, cfg.data.max_prompt_tokens)
    chunk, n = cfg.trainer.prompts_per_step, pc.samples_per_prompt
    plain = OmegaConf.to_container(cfg, resolve=True)
    # Engines only: no learner ranks to place (so nothing to sleep for); a colocated layout keeps its engines per
    # GPU (`rollout.engines_per_gpu` on one GPU, as `cluster=single_gpu` runs them), a split one a GPU each.
    plain["learner"]["num_ranks"], plain["critic"]["enabled"], plain["rollout"]["sleep_level"] = 0, False, 0
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus or max(rc.num_engines + cfg.reward.num_actors,
                                                              os.cpu_count() or 1))
    placement = Placement(plain)
    groups = [RewardGroup(OmegaConf.to_object(cfg.reward), cfg.cluster.device, placement)]
    rng = np.random.default_rng([cfg.trainer.seed, 1])
    keys = (pc.prompt_key, pc.chosen_key, pc.rejected_key)
    os.makedirs(os.path.dirname(os.path.abspath(pc.path)), exist_ok=True)
    tmp = f"{pc.path}.tmp-{os.getpid()}"
    written = cut = 0
    try:
        groups.append(RolloutGroup(plain, model_path, placement))
        rewards, rollout = groups
        rewards.ready(([p.text for p in prompts[:chunk]], [p.columns for p in prompts[:chunk]]))
        rollout.ready()
        with open(tmp, "w") as out:
            for start in range(0, len(prompts), chunk):
                batch = [p for p in prompts[start:start + chunk] for _ in range(n)]
                params = SamplingParams(temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
                                        max_new_tokens=rc.max_new_tokens, seed=cfg.trainer.seed * 100_003 + start)
                samples = rollout.generate([p.ids for p in batch], params)
                texts = tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
                result = rewards.score([p.text for p in batch], texts, [p.columns for p in batch],
                                       [p.messages for p in batch])
                result.check_failures(cfg.reward.max_failure_frac)
                for c, r in select_pairs(result.total, n, cfg.algo.pairs, rng):
                    truncated = (samples[c].finish_reason == "length", samples[r].finish_reason == "length")
                    row = pair_row(batch[c], start + c // n, keys, (texts[c], texts[r]),
                                   (result.total[c], result.total[r]), truncated)
                    out.write(json.dumps(row) + "\n")
                    written += 1
                    cut += any(truncated)
        os.replace(tmp, pc.path)
    finally:
        for group in (*groups, placement):
            group.shutdown()
        if os.path.exists(tmp):
            os.remove(tmp)
    counts = {"prompts": len(prompts), "pairs": written, "ties": len(prompts) - written, "truncated": cut}
    print(f"[rlpost] {written} pairs from {len(prompts)} prompts x {n} samples written to {pc.path}; "
          f"{counts['ties']} prompts skipped (their completions all tied); {cut} pairs with a side cut by "
          f"rollout.max_new_tokens={rc.max_new_tokens}"
          + (f"; {dropped} longer than data.max_prompt_tokens dropped" if dropped else ""), flush=True)
    return counts


def main(argv: list[str] | None = None) -> None:
    from hydra.errors import HydraException

    from rlpost.train import compose_config, one_line_errors

    try:
        cfg = compose_config(sys.argv[1:] if argv is None else argv)
    except HydraException as err:  # a bad override: Hydra's own message, first line
        print(f"rlpost: error: {str(err).strip().splitlines()[0]}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    with one_line_errors():
        generate_pairs(cfg)

if __name__ == "__main__":
    main()
