"""GSM8K correctness reward: 1.0 if the completion's final answer equals the reference answer, else 0.0.

This file is also the example of the reward plug-in protocol. A reward function is any Python function

    fn(prompts: list[str], completions: list[str], **columns) -> list[float] | list[dict]

- It is batched: `prompts[i]` and `completions[i]` belong together, and it returns one value per completion:
  a float, or a dict with a `score` and extra metrics (numbers, logged as `reward/<label>/<metric>`).
  `async def` works too.
- `columns` are the dataset row's other fields, as lists aligned with `prompts` (GSM8K rows have `answer`),
  plus the extra keys of the function's `reward.functions` entry. Accept `**_` to ignore the ones you don't use.
- rlpost runs it in separate worker processes, one item at a time, with a per-item timeout
  (`reward.item_timeout_s`): a hang or crash scores `reward.error_score` for that item and never stalls training.
  So don't add timeouts of your own, and don't rely on being on the main thread.

Point the config at your copy with `reward.functions=[{path: my_reward.py, name: score}]`.
"""

import logging

from math_verify import parse, verify

# math-verify's only warnings are about its own timeouts being off, which is on purpose here (see below).
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _after_marker(text: str) -> str | None:
    """The text after the last '####' (the GSM8K answer marker), or None if there is none."""
    return text.rsplit("####", 1)[1] if "####" in text else None


def score(prompts: list[str], completions: list[str], answer: list[str], **_) -> list[float]:
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        gold = (_after_marker(reference) or reference).replace(",", "").strip()  # GSM8K golds: "#### 1,000"
        # Without a marker, hand math-verify the whole completion: its extraction finds the final answer
        # (\boxed{...}, "the answer is ...", else the last number).
        prediction = _after_marker(completion)
        if prediction is None:
            prediction = completion
        # Timeouts off: math-verify's own use signal.alarm, which fails off the main thread; rlpost enforces
        # the timeout by running this function in a worker process it can kill.
        correct = verify(parse(gold, parsing_timeout=None), parse(prediction, parsing_timeout=None),
                         timeout_seconds=None)
        rewards.append(1.0 if correct else 0.0)
    return rewards
