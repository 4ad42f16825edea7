"""Score a batch of completions with every configured reward function, robustly, in worker processes.

Choices:
- Every (function, item) pair is its own pool call with a batch of one. Plug-ins are written batched (that's
  the natural signature), but calling them per item means one slow item times out alone instead of taking its
  whole batch down with it, and the items of a batch verify in parallel across the worker processes.
- A call that raises, returns something other than one finite number, crashes its worker, or times out scores
  `reward.error_score` for that component and is counted; it never fails the training step. The first few
  failures are kept with their samples so the run folder shows what went wrong.
- All functions are also loaded once in this process at construction, so a bad config raises `ConfigError`
  before training starts rather than as an error string from every worker call.
- total = sum over components of weight * value. Components with weight 0 are still computed and logged.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from rlpost.config import ConfigError, RewardConfig, RewardFunctionConfig
from rlpost.rewards.loader import load_reward_fn, reward_label
from rlpost.rewards.pool import CallResult, ProcessPool

MAX_FAILURES = 5  # failing samples kept per score() call


@dataclass
class RewardResult:
    total: list[float]
    components: dict[str, list[float]]  # label -> one value per item (unweighted)
    errors: int  # calls that raised, returned a bad value or crashed their worker (timeouts not included)
    timeouts: int
    failures: list[dict] = field(default_factory=list)  # {label, prompt, completion, error}, the first few

    @staticmethod
    def concat(parts: list[RewardResult]) -> RewardResult:
        """Results of consecutive slices of one batch (scored by several reward actors), as one result."""
        return RewardResult(
            total=[x for p in parts for x in p.total],
            components={k: [x for p in parts for x in p.components[k]] for k in parts[0].components},
            errors=sum(p.errors for p in parts), timeouts=sum(p.timeouts for p in parts),
            failures=[f for p in parts for f in p.failures][:MAX_FAILURES])


def _plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra hands us) as plain dicts/lists, so workers and plug-ins get plain data."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:
        return value
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _as_score(value: Any) -> float:
    """The single number a per-item call must return, as a float; ValueError saying what was wrong otherwise."""
    if hasattr(value, "tolist"):  # numpy / torch arrays
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of 1 float, got {type(value).__name__}")
    if len(value) != 1:
        raise ValueError(f"expected a list of 1 float (one per completion), got {len(value)} values")
    (x,) = value
    if not isinstance(x, numbers.Real):
        raise ValueError(f"expected a number, got {type(x).__name__}: {str(x)[:100]!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {x}")
    return x


class RewardManager:
    """Owns the reward functions of `cfg.functions` and a pool of `cfg.num_workers` processes that run them."""

    def __init__(self, cfg: RewardConfig):
        if cfg.num_workers < 1:
            raise ConfigError(f"reward.num_workers: must be at least 1, got {cfg.num_workers}")
        if cfg.item_timeout_s <= 0:
            raise ConfigError(f"reward.item_timeout_s: must be > 0 seconds, got {cfg.item_timeout_s}")
        if not cfg.functions:
            raise ConfigError("reward.functions: empty; configure at least one reward function")
        self.cfg = cfg
        self.specs = [RewardFunctionConfig(path=s.path, module=s.module, name=s.name, weight=float(s.weight),
                                           kwargs=dict(_plain(s.kwargs) or {})) for s in cfg.functions]
        for i, spec in enumerate(self.specs):
            load_reward_fn(spec, i)  # raises ConfigError now, in the driver's view, not later in a worker
        self._labels = []
        for spec in self.specs:
            label, n = reward_label(spec), 1
            while label in self._labels:  # gsm8k, gsm8k_2, gsm8k_3, ...
                n += 1
                label = f"{reward_label(spec)}_{n}"
            self._labels.append(label)
        self.pool = ProcessPool(self.specs, cfg.num_workers)

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
        results: list[CallResult] = self.pool.map(calls, timeout_s=self.cfg.item_timeout_s) if calls else []

        components: dict[str, list[float]] = {}
        errors = timeouts = 0
        failures: list[dict] = []
        for j, label in enumerate(self._labels):
            values = []
            for i, result in enumerate(results[j * n:(j + 1) * n]):
                error = result.error
                if error is None:
                    try:
                        values.append(_as_score(result.value))
                        continue
                    except ValueError as e:
                        error = f"bad return value: {e}"
                values.append(float(self.cfg.error_score))
                if result.timed_out:
                    timeouts += 1
                else:
                    errors += 1
                if len(failures) < MAX_FAILURES:
                    failures.append({"label": label, "prompt": prompts[i], "completion": completions[i],
                                     "error": error})
            components[label] = values

        weights = {label: spec.weight for spec, label in zip(self.specs, self._labels, strict=True)}
        total = [sum(w * components[label][i] for label, w in weights.items()) for i in range(n)]
        return RewardResult(total=total, components=components, errors=errors, timeouts=timeouts,
                            failures=failures)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
