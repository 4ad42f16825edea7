"""What the benchmarks share: the markdown table they print, the "median (min-max)" summary of repeated timings,
the machine and package versions a result is recorded with, the section a result is appended to a results file
as (`--results`), and the measuring helpers more than one script needs (a free port, the `copy_` bandwidth, a
Qwen2.5-0.5B-shaped model). The scripts run as modules from the checkout: `python -m bench.NAME`."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def median_range(values: Sequence[float], fmt: str = ".3f") -> str:
    """`median (min-max)` of repeated measurements, each number in `fmt`."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


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


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="", help="markdown file to append this run's section to "
                        "(date, machine, versions, command, table), e.g. bench/RESULTS.md")


def command_line(module: str) -> str:
    """The command line that ran this script, as a results file records it."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def append_section(path: Path, heading: str, details: str, command: str, table: str, tail: str = "",
                   software: str = "") -> None:
    """Append one run's section to a results file (created if missing): heading and date, what ran and where,
    software versions (this process's, or `software` for results measured elsewhere and joined here), the exact
    command, the table. It goes at the end; bench/RESULTS.md keeps newest first by hand."""
    section = (f"### {time.strftime('%Y-%m-%d')} — {heading}\n\n{details}. Software: {software or versions()}.\n\n"
               f"`{command}`\n\n"
               f"{table}\n" + (f"\n{tail}\n" if tail else ""))
    text = path.read_text() if path.exists() else ""
    path.write_text((text.rstrip() + "\n\n" if text.strip() else "") + section)
    print(f"\nsection appended to {path}", flush=True)


def append_row(path: Path, table_header: str, section: str, cells: list[str]) -> None:
    """Add a row at the end of the table that `table_header` (its two header lines) starts, in a results file that
    holds other sections too; the first time, `section` (heading and text) and the header go at the file's end."""
    text = path.read_text() if path.exists() else ""
    if table_header not in text:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section.rstrip() + "\n\n" + table_header
    end = text.index(table_header) + len(table_header)
    while text.startswith("|", end):
        end = text.index("\n", end) + 1
    row = "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n"
    path.write_text(text[:end] + row + text[end:])


def free_port() -> int:
    """A TCP port nothing listens on right now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_reps(fn: Callable[[], object], device: str, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of `fn` after one warm-up call (allocator, kernel selection): CUDA events
    around each call on a GPU, the wall clock on the CPU."""
    import torch

    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def copy_bandwidth_gbs(nbytes: int = 2**30, reps: int = 20, device: str = "cuda") -> float:
    """`copy_` of one buffer into another on `device`, bytes copied per second (GB/s): GPU timed with CUDA events
    over `reps` copies, CPU the median of `reps` timed copies."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    if device == "cpu":
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
        return nbytes / statistics.median(times) / 1e9
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    del src, dst
    torch.cuda.empty_cache()
    return nbytes / seconds / 1e9


def build_qwen05b(folder: str, tokenizer_from: str) -> str:
    """Qwen2.5-0.5B's shape (494M parameters, tied embeddings), random weights, SmolLM2's tokenizer (vLLM only
    needs one that loads; the vocabulary being smaller than the embedding is fine)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (Path(folder) / "config.json").exists():
        return folder
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder
