"""bench/vocab.py on the CPU at a small size: three rows, numbers in every cell, the section appended."""

from __future__ import annotations

from pathlib import Path

from bench import vocab


def test_vocab_bench_on_cpu(tmp_path: Path, capsys) -> None:
    results = tmp_path / "RESULTS.md"
    assert vocab.main(["--device", "cpu", "--tokens", "64", "--vocab", "1000", "--dtype", "float32", "--reps", "2",
                       "--copy-mb", "16", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith(("| before", "| now"))]
    assert [r[0] for r in rows] == ["before: logprobs, then an entropy pass", "now: logprobs and entropy",
                                    "now: logprobs alone"]
    for cells in rows:
        median = float(cells[1].split()[0])
        assert median > 0 and float(cells[2]) > 0 and float(cells[3]) > 0
    assert rows[0][3] == "1.00"  # the way before is the reference
    text = results.read_text()
    assert "Vocabulary-wide work of a micro-batch" in text and "64 tokens x 1000 vocabulary" in text
    assert "`python -m bench.vocab" in text


def test_the_two_entropy_ways_agree() -> None:
    import torch

    from rlpost.logprobs import token_logprobs_and_entropy

    logits = torch.randn(2, 5, 300) * 4
    _, fused = token_logprobs_and_entropy(logits, torch.zeros(2, 5, dtype=torch.long), 0.7)
    torch.testing.assert_close(fused.view(-1), vocab.entropy_pass(logits, 0.7), rtol=1e-5, atol=1e-5)
