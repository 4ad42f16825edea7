"""Reward plug-ins used by the integration tests (loaded by path, as users' own rewards are)."""

from __future__ import annotations


def digit_fraction(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Share of characters that are digits: a dense reward on which a random tiny model's samples differ, so
    GRPO advantages are non-zero and the learner really moves."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
