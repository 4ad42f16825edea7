"""What the speed benchmarks share: the markdown table they print, and the machine and package versions a result
is recorded with, and the section a result is appended to a results file as."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine(device: str) -> str:
    """The GPU's name (`device="cuda"`), or the CPU's core count."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def versions(names: tuple[str, ...] = ("torch", "transformers", "trl", "deepspeed", "ray", "vllm")) -> str:
    """`name version` of each installed package of `names`."""
    import importlib.metadata as md

    found = []
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            found.append(f"{name} {md.version(name)}")
    return ", ".join(found)


def append_section(path: Path, heading: str, details: str, command: str, table: str, tail: str = "") -> None:
    """Append one run's section to a results file (created if missing): heading and date, what ran and where,
    software versions, the exact command, the table. It goes at the end; bench/RESULTS.md keeps newest first by
    hand."""
    section = (f"### {time.strftime('%Y-%m-%d')} — {heading}\n\n{details}. Software: {versions()}.\n\n`{command}`\n\n"
               f"{table}\n" + (f"\n{tail}\n" if tail else ""))
    text = path.read_text() if path.exists() else ""
    path.write_text((text.rstrip() + "\n\n" if text.strip() else "") + section)


def append_table_row(path: Path, section: str, header: str, cells: list[str]) -> None:
    """Add a row at the end of the table that starts with `header` (its title and separator lines; the file
    holds other benchmarks' sections too). The first time, `section` (a heading and the protocol) and the
    table's header are added at the end of the file."""
    text = path.read_text() if path.exists() else ""
    if header not in text:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section.rstrip() + "\n\n" + header
    end = text.index(header) + len(header)
    while text.startswith("|", end):
        end = text.index("\n", end) + 1
    row = "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n"
    path.write_text(text[:end] + row + text[end:])
