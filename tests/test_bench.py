"""bench/gsm8k.py: the scoring protocol on hand-written completions, and the whole script on CPU (tiny model,
8 problems, HF engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from bench import gsm8k as bench
from rlpost.config import RewardConfig, RewardFunctionConfig
from rlpost.rewards.manager import RewardManager

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_prompts_and_scoring(tiny_model_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = bench.load_problems(tokenizer, limit=3)
    assert len(prompts) == 3
    # The training prompt: the question, then the instruction, inside the chat template.
    first = prompts[0]
    assert "Janet" in first.text and "Put the final numeric answer after '####'." in first.text
    assert first.columns["answer"].rstrip().endswith("#### 18")
    completions = ["16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars. #### 18",  # right, with the marker
                   "The answer is 3.",  # problem 2's answer is 3: right, found by math-verify without the marker
                   "#### 1"]  # wrong
    with RewardManager(RewardConfig(functions=[RewardFunctionConfig(path=str(ROOT / "rewards" / "gsm8k.py"))],
                                    num_workers=1)) as manager:
        assert bench.score(manager, prompts, completions) == [True, True, False]


@pytest.mark.slow
def test_bench_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    bench.append_row(results, bench.RESULTS_HEADER, bench.RESULTS_SECTION,
                           ["2026-01-01", "earlier machine", "vllm", "m", "1319", "512", "0.5", "60", "x"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.gsm8k", "--model", tiny_model_dir, "--engine", "hf",
           "--limit", "8", "--max-new-tokens", "16", "--results", str(results), "--outcomes",
           str(tmp_path / "outcomes.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.splitlines()
    row = next(line for line in table if line.startswith(f"| {Path(tiny_model_dir).name} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["hf", "8"]
    assert 0 <= int(cells[3]) <= 8 and float(cells[4]) == int(cells[3]) / 8
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    assert outcomes["label"] == Path(tiny_model_dir).name
    assert len(outcomes["correct"]) == 8 and sum(outcomes["correct"]) == int(cells[3])
    lines = results.read_text().splitlines()
    assert lines[0] == "## GSM8K (`bench/gsm8k.py`)"
    rows = [line for line in lines if line.startswith("| 20")]  # rows start with the date
    assert len(rows) == 2  # appended, not overwritten
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert cells[2:6] == ["hf", Path(tiny_model_dir).name, "8", "16"] and cells[6] == f"{float(cells[6]):.4f}"
    assert cells[8].startswith("python -m bench.gsm8k --model")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the vLLM engine may well be there")
def test_vllm_engine_missing_is_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.gsm8k", "--model", tiny_model_dir, "--engine",
                          "vllm", "--limit", "1", "--results", str(tmp_path / "r.md")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("bench/gsm8k.py: error: --engine vllm: vLLM is not installed")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.md").exists()


def test_rows_go_to_the_end_of_the_gsm8k_table(tmp_path: Path) -> None:
    """RESULTS.md holds other benchmarks' sections after the GSM8K table: a new row lands in the table."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## GSM8K (`bench/gsm8k.py`)\n\nProtocol.\n\n" + bench.RESULTS_HEADER
                       + "| 2026-01-01 | a |\n\n## Sync\n\n| x | y |\n")
    bench.append_row(results, bench.RESULTS_HEADER, bench.RESULTS_SECTION, ["2026-02-02", "b"])
    lines = results.read_text().splitlines()
    assert lines[lines.index("| 2026-01-01 | a |") + 1] == "| 2026-02-02 | b |"
    assert lines[-1] == "| x | y |"
