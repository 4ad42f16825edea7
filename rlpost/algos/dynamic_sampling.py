"""Groups whose completions all score the same ("tied") give every completion a zero advantage under a group
baseline. Two uses of that here:
- DAPO's dynamic sampling (arXiv 2503.14476, sec. 3.2): they add nothing but noise and a smaller effective batch,
  so they are dropped and the batch is refilled from the next prompts, up to a cap on prompts sampled per step.
- `algo.skip_tied_groups`: without a KL term their policy-gradient is exactly zero, so the learner need not run
  them at all; they still count in the loss normalisers, which keeps every update what it would have been
  (`untied_subset` picks what is computed)."""

from __future__ import annotations

import math


def informative_groups(scores: list[float], group_size: int) -> list[bool]:
    """Per group (stored contiguously): True if its scores are not all equal."""
    if len(scores) % group_size:
        raise ValueError(f"number of scores ({len(scores)}) must be a multiple of group_size ({group_size})")
    groups = [scores[i:i + group_size] for i in range(0, len(scores), group_size)]
    return [any(s != g[0] for s in g) for g in groups]


def tied_samples(scores: list[float], group_size: int) -> list[bool]:
    """Per sample: True if every score of its group (stored contiguously) is the same."""
    return [not informative for informative in informative_groups(scores, group_size) for _ in range(group_size)]


def refill_size(missing: int, sampled: int, kept: int, remaining: int) -> int:
    """Prompts to sample in the next round: the `missing` ones scaled by the keep rate seen so far (so one more
    round usually suffices), but no more than the cap leaves (`remaining`). With nothing kept yet, as many again
    as sampled so far."""
    want = math.ceil(missing * sampled / kept) if kept else max(sampled, missing)
    return max(0, min(want, remaining))


def untied_subset(tied: list[bool], multiple: int) -> list[int]:
    """Indices, in order, of the items to compute: every untied one, plus the first tied ones needed to make the
    count a positive multiple of `multiple` (the learner ranks take equal shares, and a mini-batch with nothing
    in it would skip its optimizer step, which moves the weights even on a zero gradient)."""
    keep = [i for i, t in enumerate(tied) if not t]
    want = max(multiple, -(-len(keep) // multiple) * multiple)
    fillers = [i for i, t in enumerate(tied) if t][:want - len(keep)]
    return sorted(keep + fillers)
