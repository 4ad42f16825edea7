"""Answer-format reward: 1.0 if the completion states its final answer in the format asked for, else 0.0.

    reward.functions=[{path: rewards/gsm8k.py, name: score}, {path: rewards/format.py, name: score, weight: 0.1}]

Formats (the `style` kwarg, default "any"):
- "hash": the last non-empty line is `#### <number>` (the GSM8K marker the default instruction asks for);
  the number may carry a sign, a `$`, thousands separators and decimals: `#### -1,250.5`.
- "boxed": the completion contains `\\boxed{...}` with something inside (LaTeX answers, MATH-style prompts).
- "any": either of the two.

It checks the shape only, not correctness: pair it with a correctness reward at a small weight, so the policy
learns the format early (when almost nothing is correct yet). The per-item `hash` and `boxed` extra metrics show
which format the policy uses (logged as `reward/format/hash` and `reward/format/boxed`).

`min_work_lines` (default 0: the shape alone) pays the format only when at least that many non-empty lines with
a digit in them come before the answer line: shown work, not a bare answer. Why: when the policy is rarely right,
a bare `#### <guess>` is the surest way to the format's reward, and GRPO finds it. Measured (bench/RESULTS.md,
run `smollm2_format`): SmolLM2-135M (2% on GSM8K) with this reward at weight 0.2 went from ~0% to 100% in the
format between steps 30 and 45, by cutting its answers from ~250 tokens to 4 (`#### 12`); accuracy did not rise.
"""

import re

HASH_LINE = re.compile(r"^####\s*[-+]?\$?\d[\d,]*(\.\d+)?\s*$")
BOXED = re.compile(r"\\boxed\{\s*[^{}\s]")
STYLES = ("hash", "boxed", "any")


def _work_lines(lines: list[str], answer_at: int) -> int:
    """Lines before the answer line that carry a number: the shown computation."""
    return sum(any(ch.isdigit() for ch in line) for line in lines[:answer_at])


def score(prompts: list[str], completions: list[str], style: str = "any", min_work_lines: int = 0,
          **_) -> list[dict]:
    if style not in STYLES:
        raise ValueError(f"style={style!r}: choose one of {', '.join(STYLES)}")
    if not isinstance(min_work_lines, int) or min_work_lines < 0:
        raise ValueError(f"min_work_lines={min_work_lines!r}: give a whole number >= 0 (0: the shape alone)")
    out = []
    for completion in completions:
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        hash_ok = bool(lines) and bool(HASH_LINE.match(lines[-1]))
        boxed_ok = bool(BOXED.search(completion))  # the whole text: the braces' content may start on the next line
        boxed_at = max((i for i, line in enumerate(lines) if "\\boxed{" in line), default=0)
        # the shape alone goes to the metrics; the score also asks for the work when min_work_lines is set
        hash_paid = hash_ok and _work_lines(lines, len(lines) - 1) >= min_work_lines
        boxed_paid = boxed_ok and _work_lines(lines, boxed_at) >= min_work_lines
        ok = {"hash": hash_paid, "boxed": boxed_paid, "any": hash_paid or boxed_paid}[style]
        out.append({"score": float(ok), "hash": float(hash_ok), "boxed": float(boxed_ok)})
    return out
