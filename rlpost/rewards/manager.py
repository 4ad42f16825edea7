"""Score a batch of completions with every configured reward function, robustly, in worker processes.

Choices:
- Every (function, item) pair is its own pool call with a batch of one. Plug-ins are written batched (that's
  the natural signature), but calling them per item means one slow item times out alone instead of taking its
  whole batch down with it, and the items of a batch verify in parallel across the worker processes. The whole
  batch also has a limit (`reward.batch_timeout_s`), so the reward phase of a step is bounded.
- A plug-in returns per item a number, or a dict with a `score` and extra metrics (numbers) that are logged as
  `reward/<label>/<metric>` (the mean over the items that report it).
- A call that raises, returns something else, crashes its worker, or times out scores `reward.error_score` for
  that component and is counted; it never fails the training step by itself. The first few failures are kept
  with their samples so the run folder shows what went wrong. But when more than `reward.max_failure_frac` of a
  batch fails in one function, `RewardResult.check_failures` stops the run: a broken reward must not train a
  model on `error_score`s.
- All functions are loaded once in this process at construction, so a bad config raises `ConfigError`
  before training starts; `dry_run` goes further and makes one dry batched call per function (the reward
  actor makes it at start-up, on its own workers: see `RewardGroup.ready`).
- total = sum over components of weight * value. Components with weight 0 are still computed and logged.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from rlpost.config import ConfigError, RewardConfig
from rlpost.rewards.loader import function_specs, load_reward_fn, reward_label, unique_labels
from rlpost.rewards.pool import CallResult, ProcessPool
from rlpost.rewards.reward_model import model_label

DEFAULT_ACCURACY = RewardConfig.accuracy  # the shipped math check's label, `rewards/gsm8k.py`
MAX_FAILURES = 5  # failing samples kept per score() call
# What the start-up dry call passes as every completion: no policy has generated anything yet.
DRY_RUN_COMPLETION = "Let me think step by step. 6 * 7 = 42.\n#### 42"


class RewardFailureError(ConfigError):
    """Too much of a batch failed in one reward function: the function (a user input) is broken."""


@dataclass
class RewardResult:
    total: list[float]
    components: dict[str, list[float]]  # label -> one value per item (unweighted)
    errors: int  # calls that raised, returned a bad value or crashed their worker (timeouts not included)
    timeouts: int
    failures: list[dict] = field(default_factory=list)  # {label, prompt, completion, error}, the first few
    extras: dict[str, list[float]] = field(default_factory=dict)  # "label/metric" -> per item, NaN = not reported
    failed: dict[str, int] = field(default_factory=dict)  # label -> items that scored error_score

    @staticmethod
    def concat(parts: list[RewardResult]) -> RewardResult:
        """Results of consecutive slices of one batch (scored by several reward actors), as one result."""
        keys = list(dict.fromkeys(k for p in parts for k in p.extras))
        return RewardResult(
            total=[x for p in parts for x in p.total],
            components={k: [x for p in parts for x in p.components[k]] for k in parts[0].components},
            errors=sum(p.errors for p in parts), timeouts=sum(p.timeouts for p in parts),
            failures=[f for p in parts for f in p.failures][:MAX_FAILURES],
            extras={k: [x for p in parts for x in p.extras.get(k, [math.nan] * len(p.total))] for k in keys},
            failed={k: sum(p.failed.get(k, 0) for p in parts) for k in parts[0].failed})

    def add_component(self, label: str, weight: float, values: list[float],
                      extras: dict[str, list[float]] | None = None) -> None:
        """Fold in a component scored elsewhere (a reward model): logged as `label`, weighted into the total."""
        if len(values) != len(self.total):
            raise ValueError(f"component {label}: {len(values)} values for {len(self.total)} items")
        self.components[label] = list(values)
        self.total = [t + weight * v for t, v in zip(self.total, values, strict=True)]
        for metric, per_item in (extras or {}).items():
            self.extras[f"{label}/{metric}"] = list(per_item)

    def correct(self, component: str | None) -> list[bool]:
        """Which items count as correct: those whose `component` is > 0, or whose total is when it is None
        (`accuracy_component` says which)."""
        values = self.total if component is None else self.components[component]
        return [v > 0 for v in values]

    def extra_means(self) -> dict[str, float]:
        """Mean of each extra metric over the items that reported it (NaN when none did)."""
        means = {}
        for key, values in self.extras.items():
            seen = [v for v in values if not math.isnan(v)]
            means[key] = sum(seen) / len(seen) if seen else math.nan
        return means

    def check_failures(self, max_frac: float, failures_file: str = "") -> None:
        """Raise `RewardFailureError` if more than `max_frac` of the items failed in any one function."""
        n = len(self.total)
        for label, failed in self.failed.items():
            if n and failed / n > max_frac:
                first = next((f["error"] for f in self.failures if f["label"] == label), "")
                where = f"; the first failing samples are in {failures_file}" if failures_file else ""
                raise RewardFailureError(
                    f"reward: {failed} of {n} items failed in reward function '{label}', more than "
                    f"reward.max_failure_frac={max_frac:g}" + (f" (first error: {first})" if first else "")
                    + f"{where}; fix the function, or raise reward.max_failure_frac if such failures are expected")


def component_labels(cfg: Any) -> list[str]:
    """The reward components' labels, functions first, then models: the keys of `RewardResult.components`."""
    return unique_labels([reward_label(spec) for spec in function_specs(cfg.functions)]
                         + [model_label(spec) for spec in cfg.models])


def accuracy_component(cfg: Any, labels: list[str]) -> str | None:
    """The component that decides correctness (the `accuracy` metric, `eval/pass@k`): `reward.accuracy` when it is
    one of `labels`; None, meaning the total reward, when it is left at its default and no such component is
    configured (a user's own reward used alone). Any other name is a mistake: ConfigError."""
    if cfg.accuracy in labels:
        return cfg.accuracy
    if cfg.accuracy == DEFAULT_ACCURACY:
        return None
    raise ConfigError(f"reward.accuracy={cfg.accuracy!r} is not one of the reward components {labels}; name one "
                      "of them, or drop the override to count a completion correct when its total reward is > 0")


def _as_number(x: Any, what: str) -> float:
    if not isinstance(x, numbers.Real):  # bools count: True = 1.0
        if not (hasattr(x, "item") and getattr(x, "ndim", None) == 0):  # a 0-d numpy/torch value
            raise ValueError(f"{what} is {type(x).__name__} {str(x)[:60]!r}, not a number")
        x = x.item()
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{what} is {x}, not a finite number")
    return x


def parse_item(x: Any) -> tuple[float, dict[str, float]]:
    """One item of a plug-in's return: a number, or {"score": number, metric: number, ...}."""
    if isinstance(x, dict):
        if "score" not in x:
            raise ValueError(f"a dict without a 'score' key (keys: {sorted(map(str, x))})")
        extras = {str(k): _as_number(v, f"metric {k!r}") for k, v in x.items() if k != "score"}
        return _as_number(x["score"], "'score'"), extras
    return _as_number(x, "the value"), {}


def parse_batch(value: Any, n: int) -> list[tuple[float, dict[str, float]]]:
    """A plug-in's whole return for `n` completions as (score, extras) per item; ValueError saying what is
    wrong otherwise."""
    if hasattr(value, "tolist"):  # numpy / torch arrays
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise ValueError(f"returned {type(value).__name__}, not a list (one float or dict per completion)")
    if len(value) != n:
        raise ValueError(f"returned {len(value)} value{'s' * (len(value) != 1)} for {n} "
                         f"completion{'s' * (n != 1)}")
    parsed = []
    for i, x in enumerate(value):
        try:
            parsed.append(parse_item(x))
        except ValueError as e:
            raise ValueError(f"item {i}: {e}" if n > 1 else str(e)) from None
    return parsed


class RewardManager:
    """Owns the reward functions of `cfg.functions` and a pool of `cfg.num_workers` processes that run them."""

    def __init__(self, cfg: RewardConfig):
        if cfg.num_workers < 1:
            raise ConfigError(f"reward.num_workers: must be at least 1, got {cfg.num_workers}")
        if cfg.item_timeout_s <= 0 or cfg.batch_timeout_s <= 0:
            raise ConfigError(f"reward.item_timeout_s={cfg.item_timeout_s}, reward.batch_timeout_s="
                              f"{cfg.batch_timeout_s}: both must be > 0 seconds")
        if not cfg.functions:
            raise ConfigError("reward.functions: empty; configure at least one reward function")
        self.cfg = cfg
        self.specs = function_specs(cfg.functions)
        # Loaded here too, not only in the workers: a ConfigError now, in the driver's view, not later per call.
        self.fns = [load_reward_fn(spec, i) for i, spec in enumerate(self.specs)]
        self._labels = unique_labels([reward_label(spec) for spec in self.specs])
        self.pool = ProcessPool(self.specs, cfg.num_workers, max_memory_mb=cfg.max_worker_memory_mb,
                                max_output_kb=cfg.max_output_kb)

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    def score(self, prompts: list[str], completions: list[str], columns: list[dict]) -> RewardResult:
        """Score item i = (prompts[i], completions[i], columns[i]) with every function; never raises per item.

        `columns[i]` are the dataset row's other fields (e.g. {"answer": "... #### 72"}); they reach the
        function as one-element lists, together with the entry's `kwargs` (which win on a name clash).
        """
        n = len(prompts)
        if len(completions) != n or len(columns) != n:
            raise ValueError(f"score(): {n} prompts, {len(completions)} completions, {len(columns)} column rows")
        calls = []
        for j, spec in enumerate(self.specs):
            for i in range(n):
                kwargs = {k: [v] for k, v in columns[i].items()} | spec.kwargs
                calls.append((j, ([prompts[i]], [completions[i]]), kwargs))
        results: list[CallResult] = self.pool.map(calls, timeout_s=self.cfg.item_timeout_s,
                                                  batch_timeout_s=self.cfg.batch_timeout_s) if calls else []

        out = RewardResult(total=[0.0] * n, components={}, errors=0, timeouts=0)
        for j, (label, spec) in enumerate(zip(self._labels, self.specs, strict=True)):
            values, extras = [], {}
            out.failed[label] = 0
            for i, result in enumerate(results[j * n:(j + 1) * n]):
                error = result.error
                if error is None:
                    try:
                        (score, item_extras), = parse_batch(result.value, 1)
                        if abs(score) > self.cfg.max_abs_score:
                            raise ValueError(f"the score {score:g} exceeds reward.max_abs_score="
                                             f"{self.cfg.max_abs_score:g}")
                        values.append(score)
                        for metric, v in item_extras.items():
                            extras.setdefault(metric, [math.nan] * n)[i] = v
                        continue
                    except ValueError as e:
                        error = f"bad return value: {e}"
                values.append(float(self.cfg.error_score))
                out.failed[label] += 1
                if result.timed_out:
                    out.timeouts += 1
                else:
                    out.errors += 1
                if len(out.failures) < MAX_FAILURES:
                    out.failures.append({"label": label, "prompt": prompts[i], "completion": completions[i],
                                         "error": error})
            out.add_component(label, spec.weight, values, extras)
        return out

    def dry_run(self, prompts: list[str], columns: list[dict]) -> None:
        """Call every function on `prompts` with a stand-in completion each: once on the whole batch, as the user
        wrote it, and once on the first prompt alone, as training calls it. ConfigError naming the function if
        it can't take the arguments, raises, hangs, or returns the wrong number or kind of values."""
        n = len(prompts)
        completions = [DRY_RUN_COMPLETION] * n
        names = list(dict.fromkeys(k for row in columns for k in row))
        sizes = [n, 1] if n > 1 else [n]
        calls = []
        for j, (spec, fn) in enumerate(zip(self.specs, self.fns, strict=True)):
            for size in sizes:
                kwargs = {k: [row.get(k) for row in columns[:size]] for k in names} | spec.kwargs
                self._check_signature(j, fn, kwargs)
                calls.append((j, (prompts[:size], completions[:size]), kwargs))
        timeout_s = min(self.cfg.batch_timeout_s, n * self.cfg.item_timeout_s)
        for (j, (batch, _), _), result in zip(calls, self.pool.map(calls, timeout_s=timeout_s), strict=True):
            what = f"the first batch ({n} prompts)" if len(batch) == n else "the first prompt alone"
            prefix = f"reward.functions[{j}] ({self._labels[j]}): the dry call on {what}"
            if result.timed_out:
                raise ConfigError(f"{prefix} did not return within {timeout_s:g} s; fix the function or raise "
                                  "reward.item_timeout_s (x batch size) and reward.batch_timeout_s")
            if result.error is not None:
                raise ConfigError(f"{prefix} failed: {' '.join(result.error.split())}; fix the function")
            try:
                parse_batch(result.value, len(batch))
            except ValueError as e:
                raise ConfigError(f"{prefix} {e}; it must return a list of floats, or of dicts with a 'score', "
                                  "one per completion") from None

    def _check_signature(self, j: int, fn, kwargs: dict) -> None:
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins and C callables have none: the dry call will tell
            return
        try:
            signature.bind([], [], **kwargs)
        except TypeError as e:
            called = ", ".join(["prompts", "completions", *(f"{k}=..." for k in kwargs)])
            raise ConfigError(f"reward.functions[{j}] ({self._labels[j]}): {self.specs[j].name}{signature} cannot "
                              f"be called as {self.specs[j].name}({called}): {e}; the signature must be "
                              "fn(prompts, completions, **columns) (add **_ to ignore columns)") from None

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

