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


def capitalised(prompts: list[str], completions: list[str], **_) -> list[float]:
    """1.0 if the completion's first visible character is an uppercase letter, else 0.0: the synthetic verifiable
    task of tests/test_learning.py. The untrained tiny model puts about 28% of its first-token probability on
    tokens that start that way (" The", "Paris", ...), so the rate starts low but every group has a fair chance
    of containing both outcomes."""
    return [1.0 if c.lstrip()[:1].isupper() else 0.0 for c in completions]
