"""Reward plug-ins used by the integration tests (loaded by path, as users' own rewards are)."""

from __future__ import annotations


def text_length(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Characters in the completion / 100: a dense reward on which a random tiny model's samples differ, so GRPO
    advantages are non-zero and the learner really moves."""
    return [len(c) / 100 for c in completions]


def final_number(prompts: list[str], completions: list[str], **_) -> list[float]:
    """The number after '####', with no fallback: fine on the start-up dry call (whose stand-in completion has
    the marker), an IndexError on every completion of a random model; a plug-in broken only on real outputs."""
    return [float(c.split("####")[1]) for c in completions]
