"""Held-out evaluation during training, through the run's own rollout engines and reward stack.

Protocol (what `eval/pass@1` and `eval/pass@k` mean):
- Prompts: `eval.data_path` (default GSM8K test), its first `eval.limit` rows, rendered exactly like the
  training prompts (same chat template, `data.instruction`, `data.system_prompt`, `data.max_prompt_tokens`).
- `eval/pass@1`: one greedy completion per prompt (temperature 0); the fraction whose accuracy component
  (`reward.accuracy`, e.g. math-verify's gsm8k check), or the total reward without one, is > 0.
- `eval/pass@k`: `eval.num_samples` = n completions per prompt at `eval.temperature` (with the rollout's top-p/k),
  c of them correct; the per-prompt unbiased estimator `pass_at_k(n, c, k)` averaged over prompts. The metric
  is named with its k, e.g. `eval/pass@4`.
- `eval/maj@k`: majority vote over the first k of those samples: the most frequent final answer
  (`final_answer`; ties go to the answer seen first) is correct when its samples are. Self-consistency
  (Wang et al. 2022) at k samples.
- The greedy pass@1 is measured at every evaluation (the test curve); the sampled metrics, which cost
  `eval.num_samples` times more, at the first and the last evaluation of a run (before and after).
- Both use `eval.max_new_tokens` (0 = `rollout.max_new_tokens`) and seeds fixed by (trainer.seed, step), so an
  evaluation is reproducible and a resumed run evaluates exactly as an uninterrupted one.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import numpy as np

from rlpost.config import ConfigError
from rlpost.data import build_prompts, load_rows
from rlpost.rewards.manager import accuracy_component
from rlpost.rollout.engine import SamplingParams

EVAL_SEED_OFFSET = 10**9  # keeps evaluation seeds apart from the training steps' (trainer.seed * 100_003 + step)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), the probability that k samples drawn without
    replacement from the n include at least one correct one. Computed as a product to avoid huge binomials."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_key(k: int) -> str:
    return f"eval/pass@{k}"


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_answer(text: str) -> str | None:
    """The completion's final answer as a vote key: the text after its last '####', else its last `\\boxed{}`,
    else its last number; commas, '$' and a trailing '.' dropped, numbers written canonically ("18.0" -> "18").
    None when nothing answer-like is found (such a sample casts no vote)."""
    if "####" in text:
        answer = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    elif "\\boxed{" in text:
        answer = text.rsplit("\\boxed{", 1)[1].split("}", 1)[0]
    else:
        numbers = _NUMBER.findall(text)
        answer = numbers[-1] if numbers else ""
    answer = answer.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(answer)
        return str(int(value)) if value.is_integer() else str(value)
    except ValueError:
        return answer or None


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the majority answer among `answers` is correct (`correct[i]` belongs to `answers[i]`); ties go to
    the answer seen first, and samples without an answer do not vote."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]  # most_common keeps first-seen order among equal counts
    return correct[answers.index(winner)]


def maj_at_k_key(k: int) -> str:
    return f"eval/maj@{k}"


class Evaluator:
    """Loads and renders the held-out prompts once (at start-up, so a bad `eval.data_path` fails before any
    actor); `run` evaluates the current policy through the given rollout and reward groups."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        ec, dc = cfg.eval, cfg.data
        rows = load_rows(ec.data_path, field="eval.data_path")
        if ec.limit > len(rows):
            raise ConfigError(f"eval.limit={ec.limit} is larger than eval.data_path={ec.data_path!r}, which has "
                              f"{len(rows)} rows; set eval.limit <= {len(rows)} (0 = all of them)")
        if ec.limit:
            rows = rows[:ec.limit]
        self.prompts, _ = build_prompts(rows, tokenizer, dc.prompt_key, dc.instruction,
                                        dc.system_prompt, dc.max_prompt_tokens)
        self.cfg = cfg
        self.tokenizer = tokenizer

    def due(self, step: int, last_step: int) -> bool:
        """At the start (step 0), every `eval.every` steps, and at the last step."""
        every = self.cfg.eval.every
        return step == 0 or step == last_step or (every > 0 and step % every == 0)

    def run(self, rollout: Any, rewards: Any, step: int, sampled_metrics: bool = True) -> dict[str, float]:
        """Greedy pass@1, and with `sampled_metrics` (the run's first and last evaluation) pass@k and maj@k."""
        ec, rc = self.cfg.eval, self.cfg.rollout
        t0 = time.perf_counter()
        max_new = ec.max_new_tokens or rc.max_new_tokens
        seed = EVAL_SEED_OFFSET + self.cfg.trainer.seed * 100_003 + step
        ids = [p.ids for p in self.prompts]
        greedy = rollout.generate(ids, SamplingParams(temperature=0.0, max_new_tokens=max_new, seed=seed))
        n, sampled = ec.num_samples if sampled_metrics else 0, []
        if n:
            sampled = rollout.generate([i for i in ids for _ in range(n)], SamplingParams(
                temperature=ec.temperature, top_p=rc.top_p, top_k=rc.top_k, max_new_tokens=max_new, seed=seed))

        # One reward call for both sets: greedy completions first, then the samples, prompt by prompt.
        samples = greedy + sampled
        owners = list(range(len(ids))) + [i for i in range(len(ids)) for _ in range(n)]
        texts = self.tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
        result = rewards.score([self.prompts[i].text for i in owners], texts,
                               [self.prompts[i].columns for i in owners], [self.prompts[i].messages for i in owners],
                               update_stats=False)
        correct = result.correct(accuracy_component(self.cfg.reward, rewards.labels))
        metrics = {"eval/pass@1": sum(correct[:len(ids)]) / len(ids),
                   "eval/response_length": sum(len(s.completion_ids) for s in greedy) / len(greedy)}
        if n:
            per_prompt = np.array(correct[len(ids):]).reshape(len(ids), n)
            metrics[pass_at_k_key(ec.k)] = float(np.mean([pass_at_k(n, int(c), ec.k) for c in per_prompt.sum(1)]))
            answers = [final_answer(t) for t in texts[len(ids):]]
            metrics[maj_at_k_key(ec.k)] = float(np.mean([
                majority_correct(answers[i * n:i * n + ec.k], per_prompt[i, :ec.k].tolist()) for i in range(len(ids))]))
        metrics["time/eval"] = time.perf_counter() - t0
        return metrics
