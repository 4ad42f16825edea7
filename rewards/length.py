"""Length penalty: 0 for completions up to a soft limit, falling linearly to -1 at a hard limit, -1 beyond.

    reward.functions=[{path: rewards/gsm8k.py, name: score},
                      {path: rewards/length.py, name: score, weight: 1.0, max_length: 800, buffer: 200}]

This is DAPO's "soft overlong punishment" (arXiv 2503.14476, eq. 13), with length in characters because reward
functions see text, not tokens. With L the completion's length, M = `max_length` and B = `buffer`:

    penalty = 0                  if L <= M - B
            = (M - B - L) / B    if M - B < L <= M
            = -1                 if L > M

Truncated completions (L near M) then score lower than complete ones of the same correctness, so the policy
learns to finish within the budget instead of being cut off. The `overlong` extra metric is the fraction of
completions in the penalised zone (logged as `reward/length/overlong`).
"""


def score(prompts: list[str], completions: list[str], max_length: int = 1000, buffer: int = 200,
          **_) -> list[dict]:
    if not 0 < buffer <= max_length:
        raise ValueError(f"need 0 < buffer <= max_length, got buffer={buffer}, max_length={max_length}")
    out = []
    for completion in completions:
        over = len(completion) - (max_length - buffer)
        penalty = 0.0 if over <= 0 else max(-1.0, -over / buffer)
        out.append({"score": penalty, "overlong": float(over > 0)})
    return out
