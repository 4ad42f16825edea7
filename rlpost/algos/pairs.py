"""Preference pairs for online DPO: which two completions of a prompt become (chosen, rejected).

A selector sees one prompt's scores and returns the indices (chosen, rejected) within the group, or None when no
pair has distinct scores: ties are skipped, since a tie says nothing about which completion is better. Each
selector gives at most one pair per prompt, so a step's number of pairs is at most its number of prompts.
"""

from __future__ import annotations

import numpy as np

from rlpost.algos.registry import Registry

PAIR_SELECTORS = Registry("pair selection", "algo.pairs")


@PAIR_SELECTORS.register("best_worst")
def best_vs_worst(scores: list[float], rng: np.random.Generator) -> tuple[int, int] | None:
    """The highest-scored completion against the lowest (the first of each on ties); the default, and the
    largest margin the group offers."""
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    return (best, worst) if scores[best] > scores[worst] else None


@PAIR_SELECTORS.register("best_random")
def best_vs_random(scores: list[float], rng: np.random.Generator) -> tuple[int, int] | None:
    """The highest-scored completion against a uniformly drawn strictly lower-scored one."""
    best = max(range(len(scores)), key=lambda i: scores[i])
    lower = [i for i in range(len(scores)) if scores[i] < scores[best]]
    return (best, lower[int(rng.integers(len(lower)))]) if lower else None


@PAIR_SELECTORS.register("random")
def random_pair(scores: list[float], rng: np.random.Generator) -> tuple[int, int] | None:
    """A uniformly drawn pair among those with distinct scores, the higher-scored one chosen."""
    pairs = [(i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] > scores[j]]
    return pairs[int(rng.integers(len(pairs)))] if pairs else None


def select_pairs(scores: list[float], group_size: int, selector: str, rng: np.random.Generator
                 ) -> list[tuple[int, int]]:
    """At most one (chosen, rejected) pair per group, as indices into `scores` (groups stored contiguously)."""
    if len(scores) % group_size:
        raise ValueError(f"number of scores ({len(scores)}) must be a multiple of group_size ({group_size})")
    select = PAIR_SELECTORS.get(selector)
    pairs = []
    for start in range(0, len(scores), group_size):
        pair = select(scores[start:start + group_size], rng)
        if pair is not None:
            pairs.append((start + pair[0], start + pair[1]))
    return pairs


def repeat_to(pairs: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """Exactly n pairs: the first n, or all of them cycled until there are n (the learner trains on a fixed
    number of sequences per step). Empty stays empty."""
    if not pairs:
        return []
    return [pairs[i % len(pairs)] for i in range(n)]
