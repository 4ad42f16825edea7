"""What the speed benchmarks share: the markdown table they print, and the machine and package versions a result
is recorded with."""

from __future__ import annotations

import contextlib
import os


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
