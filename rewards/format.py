"""Answer-format reward: 1.0 if the completion states its final answer in the format asked for, else 0.0.

    reward.functions=[{path: rewards/gsm8k.py, name: score}, {path: rewards/format.py, name: score, weight: 0.1}]

Formats (the `style` kwarg, default "any"):
- "hash": the last non-empty line is `#### <number>` (the GSM8K marker the default instruction asks for);
  the number may carry a sign, a `$`, thousands separators and decimals: `#### -1,250.5`.
- "boxed": the completion contains `\\boxed{...}` with something inside (LaTeX answers, MATH-style prompts).
- "any": either of the two.

It checks the shape only, not correctness: pair it with a correctness reward at a small weight, so the policy
learns the format early (when almost nothing is correct yet) without preferring well-formatted wrong answers.
The per-item `hash` and `boxed` extra metrics show which format the policy uses (logged as
`reward/format/hash` and `reward/format/boxed`).
"""

import re

HASH_LINE = re.compile(r"^####\s*[-+]?\$?\d[\d,]*(\.\d+)?\s*$")
BOXED = re.compile(r"\\boxed\{\s*[^{}\s]")
STYLES = ("hash", "boxed", "any")


def score(prompts: list[str], completions: list[str], style: str = "any", **_) -> list[dict]:
    if style not in STYLES:
        raise ValueError(f"style={style!r}: choose one of {', '.join(STYLES)}")
    out = []
    for completion in completions:
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        hash_ok = bool(lines) and bool(HASH_LINE.match(lines[-1]))
        boxed_ok = bool(BOXED.search(completion))
        ok = {"hash": hash_ok, "boxed": boxed_ok, "any": hash_ok or boxed_ok}[style]
        out.append({"score": float(ok), "hash": float(hash_ok), "boxed": float(boxed_ok)})
    return out
