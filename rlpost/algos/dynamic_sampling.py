"""DAPO's dynamic sampling (arXiv 2503.14476, sec. 3.2): prompts whose completions all score the same give every
completion a zero advantage, so they add nothing but noise and a smaller effective batch. They are dropped and
the batch is refilled from the next prompts, up to a cap on prompts sampled per step."""

from __future__ import annotations

import math


def informative_groups(scores: list[float], group_size: int) -> list[bool]:
    """Per group (stored contiguously): True if its scores are not all equal."""
    if len(scores) % group_size:
        raise ValueError(f"number of scores ({len(scores)}) must be a multiple of group_size ({group_size})")
    groups = [scores[i:i + group_size] for i in range(0, len(scores), group_size)]
    return [any(s != g[0] for s in g) for g in groups]


def refill_size(missing: int, sampled: int, kept: int, remaining: int) -> int:
    """Prompts to sample in the next round: the `missing` ones scaled by the keep rate seen so far (so one more
    round usually suffices), but no more than the cap leaves (`remaining`). With nothing kept yet, as many again
    as sampled so far."""
    want = math.ceil(missing * sampled / kept) if kept else max(sampled, missing)
    return max(0, min(want, remaining))
