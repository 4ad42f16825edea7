"""bench/vs_trl.py on CPU: both sides (rlpost through Ray + DeepSpeed + the HF engine, TRL's GRPOTrainer with HF
generation) run two steps of the tiny model, and the script prints the phase table with the ratio and appends it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.vs_trl import verdict

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_vs_trl_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "bench.vs_trl", "--model", tiny_model_dir, "--device", "cpu",
           "--steps", "2", "--prompts", "2", "--group", "2", "--new-tokens", "8", "--micro", "2",
           "--results", str(results)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    lines = out.stdout.splitlines()
    for side in ("rlpost", "trl"):  # every step of both sides, every phase, as numbers
        steps = [line for line in lines if line.startswith(f"{side} step ")]
        assert len(steps) == 2, lines
        phases = dict(kv.split("=") for kv in steps[-1].split(": ", 1)[1].split())
        assert set(phases) == {"generate", "sync", "reward", "experience", "train", "step"}
        assert float(phases["step"]) > 0 and float(phases["generate"]) > 0
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| phase")]
    assert [r.split("|")[1].strip() for r in rows] == ["generate", "sync", "reward", "experience", "train", "step"]
    step_ratio = float(rows[-1].split("|")[4].strip().rstrip("x"))  # TRL / rlpost of the median step
    summary = next(line for line in lines if line.startswith("rlpost's step is"))
    if step_ratio != 1.0:  # 1.00x: either word, the medians differ past the rounding
        assert summary.endswith("faster than TRL's" if step_ratio > 1 else "slower than TRL's"), summary
    appended = results.read_text()
    assert "rlpost vs TRL GRPOTrainer" in appended and "trl 1.16.0" in appended
    assert appended.count("| step |") == 1


def test_verdict_says_slower_when_rlpost_is_slower() -> None:
    assert verdict(1.0, 2.5) == "rlpost's step is 2.50x faster than TRL's"
    assert verdict(3.0, 2.0) == "rlpost's step is 1.50x slower than TRL's"
