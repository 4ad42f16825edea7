"""bench/common.py: the pieces every benchmark script shares (formatting, results files)."""

from __future__ import annotations

import socket
from pathlib import Path

from bench.common import append_row, append_section, free_port, markdown_table, median_range

HEADER = "| date | value |\n| --- | ---: |\n"


def test_median_range() -> None:
    assert median_range([0.5, 0.25, 2.0]) == "0.500 (0.250-2.000)"
    assert median_range([1234.0, 999.0], ",.0f") == "1,116 (999-1,234)"


def test_append_row_creates_the_section_then_extends_its_table(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    append_row(results, HEADER, "## Scores\n\nOne row per run.", ["2026-01-01", "a"])
    expected = "# Benchmark results\n\n## Scores\n\nOne row per run.\n\n" + HEADER + "| 2026-01-01 | a |\n"
    assert results.read_text() == expected
    results.write_text(results.read_text() + "\n## Later section\n\n| x | y |\n")
    append_row(results, HEADER, "## Scores", ["2026-02-02", "b|c"])
    lines = results.read_text().splitlines()
    assert lines[lines.index("| 2026-01-01 | a |") + 1] == "| 2026-02-02 | b\\|c |"  # in the table, escaped
    assert lines[-1] == "| x | y |" and results.read_text().count("## Scores") == 1


def test_append_section_records_what_ran(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    table = markdown_table(["a", "b"], [["1", "2"]])
    append_section(results, "Heading", "where", "python -m bench.x --y", table, "a note")
    text = results.read_text()
    assert text.startswith("### ") and "— Heading\n\nwhere. Software: torch " in text
    assert "`python -m bench.x --y`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\na note\n" in text


def test_free_port_can_be_bound() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
