"""bench/learner.py: the MFU arithmetic by hand, and the whole script on CPU (tiny model, ZeRO 0 and 3, each stage
in its own process) printing a parseable table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import learner as bench

ROOT = Path(__file__).resolve().parent.parent


def test_mfu_by_hand() -> None:
    # 0.5e9 params x 32,768 tokens x 6 = 9.83e16 FLOPs in 0.5 s = 196.6 TFLOP/s, of a 800 TFLOP/s peak: 0.2458.
    assert bench.mfu(500_000_000, 32_768, 0.5, 800.0) == pytest.approx(0.24576)


def test_synthetic_items_have_the_asked_length(tiny_model_dir: str) -> None:
    items = bench.synthetic_items(3, 64, 1000)
    assert [len(it.prompt_ids) + len(it.completion_ids) for it in items] == [64, 64, 64]
    assert all(len(it.advantages) == len(it.completion_ids) == len(it.rollout_logprobs) for it in items)


def test_rollout_lengths_spread_and_padding_by_hand() -> None:
    items = bench.synthetic_items(64, 64, 1000, lengths="rollout")
    lengths = [len(it.prompt_ids) + len(it.completion_ids) for it in items]
    assert min(lengths) >= 16 and max(lengths) <= 64 and len(set(lengths)) > 10
    assert all(len(it.prompt_ids) == n // 4 for it, n in zip(items, lengths, strict=True))
    # Micro-batches of 3 + 1 and 2 + 2 tokens are 4 and 2 wide: 8 positions, 8 tokens -> no padding; 3 + 1 alone
    # (2 sequences x 3 wide = 6 positions, 4 tokens): a third is padding.
    def item(n):
        return bench.synthetic_items(1, n, 1000)[0]
    assert bench.padding_share([[item(4)], [item(2), item(2)]]) == 0.0
    assert bench.padding_share([[item(3), item(1)]]) == pytest.approx(1 / 3)


def test_profile_kinds_by_hand() -> None:
    ops = [("aten::mm", 3.0), ("aten::addmm", 1.0), ("aten::_efficient_attention_forward", 1.0),
           ("rlpost::vocabulary/aten::exp_", 0.25), ("rlpost::vocabulary/aten::copy_", 0.25),
           ("aten::_fused_adamw_", 0.5), ("aten::copy_", 1.0), ("aten::mul", 3.0)]
    kinds = {k: (s, share) for k, s, share in bench.profile_kinds(ops)}
    assert kinds == {"vocabulary (logprobs, entropy)": (0.5, 0.05), "matmul": (4.0, 0.4), "attention": (1.0, 0.1),
                     "optimizer": (0.5, 0.05), "copy / cast": (1.0, 0.1), "other": (3.0, 0.3)}


def test_profiled_step_names_the_vocabulary_work() -> None:
    """The operators inside rlpost.logprobs' profiler range come out prefixed, forward and backward, and the rest
    keep their names; the times are self times, so they add up to the total once."""
    import torch

    from rlpost.logprobs import token_logprobs_and_entropy

    hidden, head = torch.randn(6, 8), torch.randn(8, 32, requires_grad=True)

    def step() -> None:
        logprobs, _ = token_logprobs_and_entropy((hidden @ head)[None], torch.randint(0, 32, (1, 6)))
        logprobs.sum().backward()

    ops = dict(bench.profiled_step(step, cuda=False))
    vocab = [op for op in ops if op.startswith("rlpost::vocabulary")]  # the range's own self time, and its ops
    assert "rlpost::vocabulary/aten::exp_" in vocab and "aten::mm" in ops
    assert not any(op.startswith("rlpost::vocabulary/aten::mm") for op in ops)  # the LM head stays a matmul
    kinds = dict((k, s) for k, s, _ in bench.profile_kinds(list(ops.items())))
    assert kinds["vocabulary (logprobs, entropy)"] == pytest.approx(sum(ops[op] for op in vocab))


@pytest.mark.slow
def test_learner_bench_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    cmd = [sys.executable, "-m", "bench.learner", "--model", tiny_model_dir, "--device", "cpu",
           "--stages", "0,3", "--seqs", "4", "--micro", "2", "--seq-len", "32", "--warmup", "1", "--reps", "2",
           "--tied", "0,0.5", "--profile", "3", "--results", str(results)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    # --profile: per run, the kinds-of-work table (six rows) and the top 3 operators, after the main table.
    assert out.stdout.count("| kind of work | self CPU s | share |") == 4
    assert out.stdout.count("| operator | self CPU s | share |") == 4
    lines = [line for line in out.stdout.split("\n\nZeRO-0 (sorted, tied 0), one profiled step")[0].splitlines()
             if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "ZeRO" and header[-2:] == ["MFU", "batch tokens/s vs row 1"] and len(header) == 14
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[5]) for r in rows] == [("0", "0"), ("0", "0.5"), ("3", "0"), ("3", "0.5")]
    assert all(len(r) == len(header) for r in rows)
    for cells in rows:
        assert cells[2] == "4 x 32" and cells[3] == "2" and cells[4] == "sorted"
        # 4 sequences x 32 tokens, none of them padding; with half of them tied the learner trains 2
        assert cells[6] == ("128" if cells[5] == "0" else "64") and cells[7] == "0.00"
        median, lo, hi = (float(x) for x in cells[8].replace("(", " ").replace(")", " ").replace("-", " ").split())
        assert min(median, lo, hi) > 0
        for col in (1, 9, 10, 12, 13):  # params M, tokens/s, TFLOP/s, MFU, vs row 1: numbers, positive
            assert float(cells[col].replace(",", "")) > 0, (header[col], cells[col])
        assert cells[11] == "-"  # peak GPU memory: none on the CPU
    assert rows[0][13] == "1.00"
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n### ") and "Learner: tokens/s and MFU" in text.splitlines()[2]
    assert "CPU" in text and "torch " in text and "deepspeed " in text
    assert "`python -m bench.learner --model" in text and "--stages 0,3" in text
    assert lines[0] in text and lines[-1] in text
