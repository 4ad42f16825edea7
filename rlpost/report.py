"""The report card: `<run_dir>/report.md` plus PNG plots in `<run_dir>/plots/`, written at the end of every run.

Everything comes from `metrics.jsonl` (the run's record, which survives resumes) and the resolved config, so a
report can also be rebuilt later: `python -m rlpost.report RUN_DIR`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

PHASES = ["time/generate", "time/reward", "time/experience", "time/train", "time/sync", "time/eval"]
PACKAGES = ["rlpost", "torch", "ray", "deepspeed", "transformers", "vllm", "hydra-core", "math-verify"]
# (file stem, title, [(metric, label)]); a plot is drawn when at least one of its metrics has values.
PLOTS = [
    ("reward", "Train reward", [("reward/mean", "mean reward"), ("accuracy", "accuracy")]),
    ("eval", "Held-out evaluation", []),  # filled with every eval/pass@* and eval/maj@* metric found
    ("kl", "KL to reference in the loss (nats/token)", [("actor/kl", "KL")]),
    # The samples' KL to the reference summed over each completion (measured whenever there is a reference; what
    # algo.kl_mode=reward penalises, PPO's way, and the adaptive controller steers): its own plot, since it and the
    # loss's per-token term differ by the response length.
    ("kl_sequence", "KL of the samples to reference (nats/sequence)", [("kl/sequence", "KL")]),
    ("response_length", "Response length (tokens)", [("response/length_mean", "mean"),
                                                     ("response/length_max", "max")]),
    ("format", "Answer format (share of completions)", [("reward/format/hash", "#### <number> last line"),
                                                        ("reward/format/boxed", "\\boxed{}")]),
    ("entropy", "Policy entropy (nats/token)", [("actor/entropy", "entropy")]),
    ("step_time", "Step time (s)", [("perf/step_seconds", "step"), ("time/generate", "generate"),
                                    ("time/train", "train")]),
]
WALL = "time/wall"  # seconds since training started (rlpost.trainer.Trainer.fit): the plots' second x axis


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = Path(run_dir, "metrics.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows that have a value for it."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def environment(cluster_resources: dict[str, float] | None = None) -> dict[str, str]:
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[name] = importlib.metadata.version(name)
    env["driver CPUs"] = str(os.cpu_count())
    try:
        import torch

        if torch.cuda.is_available():
            env["driver GPUs"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    if cluster_resources:
        # Ray's totals over all nodes; GPU models show up as accelerator_type:* keys.
        env["Ray cluster"] = ", ".join(f"{k}={v:g}" for k, v in sorted(cluster_resources.items())
                                       if k in ("CPU", "GPU") or k.startswith("accelerator_type"))
    return env


def time_breakdown(rows: list[dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(phase, total seconds, mean seconds per occurrence, share of the summed phases) for phases present."""
    totals = {}
    for phase in PHASES:
        _, values = series(rows, phase)
        if values:
            totals[phase] = (sum(values), sum(values) / len(values))
    grand = sum(t for t, _ in totals.values()) or 1.0
    return [(phase, total, mean, total / grand) for phase, (total, mean) in totals.items()]


def eval_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every eval/pass@* and eval/maj@* metric in the record: pass@ first, then by k."""
    keys = {k for r in rows for k in r if k.startswith(("eval/pass@", "eval/maj@"))}
    return sorted(keys, key=lambda k: (k.startswith("eval/maj@"), int(k.split("@")[1])))


def eval_scores(rows: list[dict[str, Any]]) -> list[tuple[str, float, int, float, int]]:
    """(metric, final value, its step, best value, its step) for every eval/pass@* and eval/maj@* metric."""
    keys = eval_keys(rows)
    out = []
    for key in keys:
        steps, values = series(rows, key)
        if values:
            best = max(range(len(values)), key=lambda i: values[i])
            out.append((key, values[-1], steps[-1], values[best], steps[best]))
    return out


def draw_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, str]]:
    """One PNG per plot with data, against steps and (when the record has `time/wall`) against wall-clock
    minutes side by side; returns (title, path relative to the run folder)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache notes would land in the run log
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    minutes = {r["step"]: r[WALL] / 60 for r in rows if r.get(WALL) is not None}
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for stem, title, curves in PLOTS:
        if stem == "eval":
            curves = [(k, k.removeprefix("eval/")) for k in eval_keys(rows)]
        data = [(label, *series(rows, key)) for key, label in curves]
        data = [d for d in data if d[1]]
        if not data:
            continue
        axes_x = [("step", lambda steps: steps)]
        if minutes:
            axes_x.append(("wall-clock minutes", lambda steps: [minutes.get(s) for s in steps]))
        fig, axes = plt.subplots(1, len(axes_x), figsize=(5 * len(axes_x), 3.2), squeeze=False)
        for ax, (xlabel, to_x) in zip(axes[0], axes_x, strict=True):
            for label, steps, values in data:
                pts = [(x, v) for x, v in zip(to_x(steps), values, strict=True) if x is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=2, label=label)
            ax.set(xlabel=xlabel)
            if xlabel == "step":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        if len(data) > 1:
            axes[0][0].legend(fontsize="small")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}.png", dpi=90)
        plt.close(fig)
        drawn.append((title, f"{out_dir.name}/{stem}.png"))
    return drawn


def write_report(run_dir: str, config_yaml: str, cluster_resources: dict[str, float] | None = None,
                 notes: list[str] | None = None) -> Path:
    """Write `<run_dir>/report.md` (and its plots) from metrics.jsonl; returns the report's path."""
    run = Path(run_dir)
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows if r["step"] > 0]
    lines = [f"# rlpost report: {run.name}", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}; {len(steps)} training steps logged"
             + (f" (last: step {steps[-1]})" if steps else "") + f"; run folder `{run}`.", ""]
    lines += [f"- {note}" for note in notes or []] + ([""] if notes else [])

    lines += ["## Evaluation", ""]
    scores = eval_scores(rows)
    if scores:
        lines += ["| metric | final | at step | best | at step |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {final:.4f} | {fs} | {best:.4f} | {bs} |" for k, final, fs, best, bs in scores]
    else:
        lines.append("No evaluation was run (eval.enabled=false).")
    last = next((r for r in reversed(rows) if r["step"] > 0), None)
    if last:
        lines += ["", "Last training step: " + ", ".join(
            f"{k} = {last[k]:.4g}" for k in ("reward/mean", "accuracy", "actor/kl", "response/length_mean")
            if last.get(k) is not None)]
    skipped = {group: int(sum(r.get(f"{group}/skipped_updates") or 0 for r in rows)) for group in ("actor", "critic")}
    if any(skipped.values()):  # each a lost mini-batch: worth seeing next to the scores
        lines += ["", "Optimizer updates skipped for a non-finite loss or gradient norm: " + ", ".join(
            f"{n} ({group})" for group, n in skipped.items() if n) + "."]

    lines += ["", "## Time per phase", ""]
    breakdown = time_breakdown(rows)
    if breakdown:
        lines += ["| phase | total s | mean s | share |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {p.removeprefix('time/')} | {t:.1f} | {m:.2f} | {s:.0%} |" for p, t, m, s in breakdown]
        _, step_seconds = series(rows, "perf/step_seconds")
        if step_seconds:
            lines += ["", f"Training steps took {sum(step_seconds):.1f} s in all, "
                          f"{sum(step_seconds) / len(step_seconds):.1f} s per step on average."]
        _, wall = series(rows, WALL)
        if wall:
            lines += [f"Training took {wall[-1] / 60:.1f} minutes of wall-clock time (evaluations included, "
                      "start-up not)."]
    else:
        lines.append("No timings logged.")

    lines += ["", "## Plots", ""]
    for title, rel in draw_plots(rows, run / "plots"):
        lines += [f"![{title}]({rel})", ""]

    lines += ["## Environment", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in environment(cluster_resources).items()]
    lines += ["", "## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    run_dir = sys.argv[1]
    config = Path(run_dir, "config.yaml")
    print(write_report(run_dir, config.read_text() if config.exists() else "(config.yaml not found)"))
