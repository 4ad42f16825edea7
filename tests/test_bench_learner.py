"""bench/learner.py: the MFU arithmetic by hand, and the whole script on CPU (tiny model, ZeRO 0 and 3, each stage
in its own process) printing a parseable table."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_learner", ROOT / "bench" / "learner.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_mfu_by_hand() -> None:
    # 0.5e9 params x 32,768 tokens x 6 = 9.83e16 FLOPs in 0.5 s = 196.6 TFLOP/s, of a 800 TFLOP/s peak: 0.2458.
    assert bench.mfu(500_000_000, 32_768, 0.5, 800.0) == pytest.approx(0.24576)


def test_synthetic_items_have_the_asked_length(tiny_model_dir: str) -> None:
    items = bench.synthetic_items(3, 64, 1000)
    assert [len(it.prompt_ids) + len(it.completion_ids) for it in items] == [64, 64, 64]
    assert all(len(it.advantages) == len(it.completion_ids) == len(it.rollout_logprobs) for it in items)


def test_learner_bench_on_cpu(tiny_model_dir: str) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "learner.py"), "--model", tiny_model_dir, "--device", "cpu",
           "--stages", "0,3", "--seqs", "4", "--micro", "2", "--seq-len", "32", "--warmup", "1", "--reps", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    rows = [line.strip("|").split("|") for line in out.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == ["0", "3"]
    for cells in rows:
        assert cells[4].strip() == "128"  # 4 sequences x 32 tokens
        assert float(cells[6].replace(",", "")) > 0 and 0 < float(cells[9]) < 1
    assert float(rows[0][10]) == 1.0
