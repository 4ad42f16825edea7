"""Vocabulary-wide work of one training micro-batch: the policy's token logprobs (forward and backward) and its
sampling entropy (a metric), timed against the bandwidth of the device, measured in the same run.

    python -m bench.vocab --device cuda --tokens 8192 --vocab 151936       # Qwen2.5's vocabulary, bf16 logits
    python -m bench.vocab --device cpu --tokens 1024 --vocab 49152 --dtype float32   # SmolLM2's, on the CPU
    ... --results bench/RESULTS.md    # also append a section (date, machine, versions, command, table) there

The learner's loss needs log_softmax(logits / T) at the sampled tokens for every completion token, through a
[tokens, vocab] logits tensor (152k columns for Qwen2.5: 2.5 GB of bf16 for 8,192 tokens, more than the rest of
the forward's activations). Rows:
- `logprobs`: `rlpost.logprobs.token_logprobs`, forward and backward (chunked, fp32 per chunk);
- `logprobs + entropy, two passes`: the same, then the entropy computed in a pass of its own over the logits
  (chunked log_softmax, -sum p log p), as the learner did before `token_logprobs_and_entropy`;
- `logprobs + entropy, one pass`: `rlpost.logprobs.token_logprobs_and_entropy` (the learner now), the entropy
  from the fp32 chunk that the logprobs already converted.

The bound: the least memory traffic the work needs, reading the logits in the forward (`dtype` bytes per entry)
and reading them again and writing their gradient in the backward (2 x `dtype` bytes), at the device's copy
bandwidth (`copy_` of 1 GiB, measured here: reads and writes counted). Median (min-max) of `--reps` after one
warm-up; the GPU timed with CUDA events.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import (
    add_results_argument,
    append_section,
    command_line,
    copy_bandwidth_gbs,
    machine,
    markdown_table,
    median_range,
)
from rlpost import logprobs as lp


def entropy_pass(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The entropy in a pass of its own (the learner's way before the fused one): chunked log_softmax, -sum p log p."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = lp._chunk_rows(flat.shape[1])
    for s in range(0, flat.shape[0], step):
        logp = torch.log_softmax(flat[s:s + step].float() / temperature, dim=-1)
        out[s:s + step] = -(logp.exp() * logp).sum(-1)
    return out


def timed(fn: Callable[[], None], device: str, reps: int) -> list[float]:
    fn()  # warm-up: allocator and kernel selection
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=8192, help="completion tokens in the micro-batch")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="the logits' dtype")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--reps", type=int, default=5)
    add_results_argument(parser)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = (torch.randn(1, args.tokens, args.vocab, device=args.device) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (1, args.tokens), device=args.device)
    t = args.temperature

    def logprobs() -> None:
        lp.token_logprobs(logits, targets, t).sum().backward()
        logits.grad = None

    def two_passes() -> None:
        lp.token_logprobs(logits, targets, t).sum().backward()
        entropy_pass(logits.detach(), t).sum().item()
        logits.grad = None

    def one_pass() -> None:
        out, entropy = lp.token_logprobs_and_entropy(logits, targets, t)
        out.sum().backward()
        entropy.sum().item()
        logits.grad = None

    # The two ways agree before anything is timed.
    _, fused = lp.token_logprobs_and_entropy(logits.detach(), targets, t)
    torch.testing.assert_close(fused.view(-1), entropy_pass(logits.detach(), t), rtol=1e-3, atol=1e-3)

    bandwidth = copy_bandwidth_gbs(device=args.device) * 1e9
    entry = logits.element_size()
    bound_s = 3 * entry * logits.numel() / bandwidth
    runs = [("logprobs (forward + backward)", timed(logprobs, args.device, args.reps)),
            ("logprobs + entropy, two passes (before)", timed(two_passes, args.device, args.reps)),
            ("logprobs + entropy, one pass (now)", timed(one_pass, args.device, args.reps))]
    before = statistics.median(runs[1][1])
    rows = [[name, median_range([x * 1e3 for x in times], ".1f"), f"{bound_s / statistics.median(times):.2f}",
             f"{before / statistics.median(times):.2f}"] for name, times in runs]
    table = markdown_table(["work", "ms median (min-max)", "vs bandwidth bound", "speed vs two passes"], rows)
    details = (f"{args.tokens} tokens x {args.vocab} vocabulary, {args.dtype} logits, T={t:g}, on "
               f"{machine(args.device)}; copy bandwidth {bandwidth / 1e9:.0f} GB/s, so the bound (read the logits "
               f"twice, write their gradient once) is {bound_s * 1e3:.1f} ms")
    print(details)
    print(table)
    if args.results:
        append_section(Path(args.results), "Vocabulary-wide work of a micro-batch: logprobs and entropy "
                       "(`bench/vocab.py`)", details, command_line("bench.vocab"), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
