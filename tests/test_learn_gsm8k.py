"""bench/learn_gsm8k.py on CPU: before, a time-budgeted training run, after, the report card and the table row
(tiny model, HF engine, 4 GSM8K problems)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.learn_gsm8k import RUNS_HEADER, accuracy_hold, main, summarize

ROOT = Path(__file__).resolve().parent.parent


def test_summarize_counts_steps_samples_and_minutes() -> None:
    rows = [{"step": 0, "eval/pass@1": 0.1, "time/wall": 5.0},
            {"step": 1, "sampling/prompts": 64.0, "time/wall": 65.0},
            {"step": 2, "sampling/prompts": 80.0, "time/wall": 125.0, "actor/skipped_updates": 1.0,
             "critic/skipped_updates": 2.0}]
    # dynamic sampling drew 16 more prompts at step 2, one policy update and two critic updates were skipped
    assert summarize(rows, group_size=8) == {"steps": 2, "samples": 1152, "train_minutes": 125.0 / 60,
                                             "skipped_updates": 3}


def test_accuracy_hold_compares_the_last_window_with_the_best() -> None:
    rows = [{"step": 0}] + [{"step": i + 1, "accuracy": a} for i, a in enumerate([0.1, 0.3, 0.5, 0.3, 0.2])]
    assert accuracy_hold(rows, window=2) == pytest.approx((0.4, 0.25))  # windows 0.2, 0.4, 0.4, 0.25
    assert accuracy_hold(rows[:3], window=10) == pytest.approx((0.2, 0.2))  # fewer steps than the window


@pytest.mark.slow
def test_learn_gsm8k_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    results, runs, run = tmp_path / "RESULTS.md", tmp_path / "runs", tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.learn_gsm8k", "cpu", "--model", tiny_model_dir, "--engine", "hf",
           "--limit", "4", "--experiment", "gsm8k_grpo_debug", "--cluster", "debug_cpu", "--run-dir", str(run),
           "--results", str(results), "--runs", str(runs), "--",
           # A budget that the first step exceeds: that step is the last (final eval, checkpoint, export).
           "trainer.steps=3", "trainer.max_minutes=0.0001", "trainer.prompts_per_step=2", "algo.group_size=2",
           "learner.num_ranks=1", "learner.micro_batch_size=2", "rollout.num_engines=1",
           "rollout.max_new_tokens=16", "reward.num_workers=1", "eval.limit=2", "eval.num_samples=2", "eval.k=2",
           "logger.wandb.mode=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trainer.max_minutes=0.0001 reached: step 1 was the last of 3" in out.stdout

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # The first and the last evaluation sample (pass@k, maj@k); both carry the wall clock.
    for row in rows:
        assert {"eval/pass@1", "eval/pass@2", "eval/maj@2", "time/wall"} <= set(row)
    assert rows[1]["time/wall"] > rows[0]["time/wall"] > 0
    # the exported policy is what is measured: no checkpoint at the end (trainer.final_checkpoint=false)
    assert (run / "hf_model" / "config.json").is_file() and not (run / "checkpoints").exists()

    card = runs / "cpu"
    assert (card / "report.md").is_file() and (card / "plots" / "eval.png").is_file()
    text = results.read_text()
    assert RUNS_HEADER in text
    row = next(line for line in text.splitlines() if "| cpu |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    name = Path(tiny_model_dir).name
    assert cells[3:5] == ["grpo", f"{name} after gsm8k_grpo_debug, 1 steps"]
    assert cells[5].count("/4)") == 2  # before and after on the same 4 problems
    assert cells[8:11] == ["1", "4", "n/a"]  # steps, samples (2 prompts x 2), no GPU
    assert cells[11].endswith("(held)")  # one step: its accuracy is both the best and the last window
    # bench/gsm8k.py's own rows name the model and the run too.
    assert f"| {name} after gsm8k_grpo_debug, 1 steps |" in text and f"| {name} (before) |" in text


@pytest.mark.parametrize("before", ["", "0.2578", "0.2578 340"])
def test_skip_before_needs_the_three_numbers(before: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["run", "--model", str(tmp_path), "--skip-before", "--before", before, "--run-dir", str(tmp_path / "r")])
    assert stop.value.code == 2 and "--skip-before needs --before 'PASS1 CORRECT N'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was made
