"""bench/sync.py on CPU: the real sync path (DeepSpeed learner actor -> HF engine actor, gloo) of the tiny model,
timed, with the CPU copy reference, printed as a table that parses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # Ray, a DeepSpeed rank and the benchmark script


def test_sync_bench_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.sync", "--cluster", "cpu", "--model", tiny_model_dir, "--buckets", "1,64",
           "--reps", "2", "--results", str(tmp_path / "RESULTS.md")]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    lines = out.stdout.splitlines()
    assert any("sync transport gloo" in line for line in lines)
    rows = [line.strip("|").split("|") for line in lines if line.startswith(f"| {Path(tiny_model_dir).name} |")]
    assert [r[2].strip() for r in rows] == ["1", "64"]  # one row per bucket size
    for cells in rows:
        buckets, seconds, gbs = int(cells[3]), float(cells[4].split()[0]), float(cells[5])
        assert buckets >= 1 and seconds > 0 and gbs > 0
    assert int(rows[0][3]) > int(rows[1][3])  # smaller buckets, more of them
    appended = (tmp_path / "RESULTS.md").read_text()
    assert "Weight sync" in appended and "python -m bench.sync --cluster cpu" in appended
    assert all(f"| {Path(tiny_model_dir).name} | {r[1].strip()} | {r[2].strip()} |" in appended for r in rows)
