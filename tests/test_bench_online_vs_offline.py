"""bench/online_vs_offline.py on CPU, the two-stage arm (d): pairs sampled and labelled by a dense stand-in
verifier, an RM trained on half of them, GRPO against that RM on the other half of the budget, GSM8K before and
after (tiny model, HF engine, 4 problems), the table and the plot. Arms (a)-(c) run the paths tests/test_offline.py
and tests/test_learning.py cover."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_stage_arm_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    results, plot, run = tmp_path / "RESULTS.md", tmp_path / "plot.png", tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.online_vs_offline", "--model", tiny_model_dir, "--engine", "hf",
           "--cluster", "debug_cpu", "--samples", "16", "--group", "4", "--prompts-per-step", "2", "--limit", "2",
           "--arms", "d", "--dpo-experiment", "gsm8k_grpo_debug", "--grpo-experiment", "gsm8k_grpo_debug",
           "--verifier", "tests/rewards_for_tests.py", "--verifier-name", "text_length", "--run-dir", str(run),
           "--results", str(results), "--plot", str(plot), "--skip-before", "--before", "0.25 1 4", "--",
           "rollout.max_new_tokens=8", "learner.num_ranks=1", "rollout.num_engines=1", "reward.num_workers=1",
           "eval.limit=2", "eval.num_samples=0", "logger.wandb.mode=disabled"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (run / "d_rm" / "hf_model" / "config.json").is_file() and (run / "d" / "hf_model").is_dir()
    row = next(line for line in results.read_text().splitlines() if line.startswith("| (d) RM + GRPO"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "16"  # 2 prompts x 4 samples for the RM's pairs + 1 GRPO step of 2 x 4
    assert cells[1].startswith("0.2500 -> ")  # --before, not measured again
    assert not (run / "before.log").exists()
    assert plot.is_file()
