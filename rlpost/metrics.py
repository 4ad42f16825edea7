"""Step metrics: one printed line per step (on a terminal with `logger.progress=true`, above a live progress
bar), one JSON object per step in `<run_dir>/metrics.jsonl`, and wandb (offline unless `logger.wandb.mode=online`;
`disabled` turns it off); and `WeightedMeans`, how a learner rank averages its metrics over micro-batches."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    import torch

# What the progress line shows, in order: (metric, short label, format).
PROGRESS_FIELDS = [("reward/mean", "reward", "{:.3f}"), ("accuracy", "acc", "{:.2f}"),
                   ("response/length_mean", "len", "{:.0f}"), ("actor/kl", "kl", "{:.4f}"),
                   ("rollout/logprob_diff", "lp_diff", "{:.3f}"), ("perf/step_seconds", "s/step", "{:.1f}"),
                   ("eval/pass@1", "eval", "{:.2f}"),
                   # offline pair training (rlpost.offline): the train pair loss, then held-out pair accuracy
                   ("dpo/loss", "dpo_loss", "{:.3f}"), ("rm/loss", "rm_loss", "{:.3f}"),
                   ("eval/pair_accuracy", "eval_acc", "{:.2f}")]
# The phases a printed line adds after the fields above.
PHASE_FIELDS = [("time/generate", "gen"), ("time/reward", "rew"), ("time/experience", "exp"), ("time/train", "train"),
                ("time/sync", "sync")]


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block takes to `timings[phase]` (a phase may be timed in several pieces)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0


class MetricsLogger:
    def __init__(self, run_dir: str, total_steps: int, wandb_mode: str, wandb_project: str,
                 config: dict[str, Any], progress: bool = True, start_step: int = 0) -> None:
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.total_steps = total_steps
        # A live bar only on a terminal: redirected (a file, a job log) its redraws are noise.
        self.bar = tqdm(total=total_steps, initial=start_step, desc="rlpost", dynamic_ncols=True,
                        disable=not (progress and sys.stderr.isatty()))
        self.wandb = None
        if wandb_mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=wandb_project, mode=wandb_mode, dir=run_dir, config=config,
                                    name=os.path.basename(run_dir))

    def log(self, step: int, metrics: dict[str, float], advance: bool = True) -> None:
        """Append one row; `advance=False` for rows that are not a training step (the evaluation at step 0)."""
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        summary = " ".join(lbl + "=" + fmt.format(metrics[k]) for k, lbl, fmt in PROGRESS_FIELDS if k in metrics)
        self.bar.set_postfix_str(summary)
        phases = " ".join(f"{lbl}={metrics[k]:.2f}s" for k, lbl in PHASE_FIELDS if k in metrics)
        line = f"[rlpost] step {step}/{self.total_steps} {summary}" + (f" | {phases}" if phases else "")
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)  # above the live bar; the run's train.log gets it too
        if advance:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()  # joins wandb's service process so the driver exits promptly
            self.wandb = None


def _clean(v: float) -> float | None:
    """JSON has no NaN: write null for metrics that have no value this step."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class WeightedMeans:
    """Token-weighted running means of scalar metrics across micro-batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxima: dict[str, float] = {}

    def add(self, key: str, value: torch.Tensor | float, weight: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def add_max(self, key: str, value: torch.Tensor | float) -> None:
        """A running maximum instead of a mean (the key should end in `_max`: ranks then merge it by max)."""
        self.maxima[key] = max(self.maxima.get(key, float("-inf")), float(value))

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0} | self.maxima
