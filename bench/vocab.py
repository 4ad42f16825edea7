"""Vocabulary-wide work of one training micro-batch: the policy's token logprobs (forward and backward) and its
sampling entropy (a metric), timed against the bandwidth of the device, measured in the same run.

    python -m bench.vocab --device cuda --tokens 8192 --vocab 151936       # Qwen2.5's vocabulary, bf16 logits
    python -m bench.vocab --device cpu --tokens 1024 --vocab 49152 --dtype float32   # SmolLM2's, on the CPU
    ... --results bench/RESULTS.md    # also append a section (date, machine, versions, command, table) there

The learner's loss needs log_softmax(logits / T) at the sampled tokens for every completion token, through a
[tokens, vocab] logits tensor (152k columns for Qwen2.5: 2.5 GB of bf16 for 8,192 tokens, more than the rest of
the forward's activations). Rows, each a forward and a backward:
- `before`: the learner's way until 2026-12-03, reproduced here (`BeforeLogprobs`, `entropy_pass`): chunked fp32
  logprobs whose backward recomputes the softmax from the logits (convert, divide, softmax, multiply, divide,
  convert back), then the entropy in a pass of its own over the logits (log_softmax, -sum p log p);
- `now: logprobs and entropy`: `rlpost.logprobs.token_logprobs_and_entropy`, the learner's way: the entropy from
  the fp32 chunk that the logprobs already converted, sharing their exponentials, and a backward that rebuilds the
  softmax in place in one fp32 copy of the chunk from the logsumexps the forward saved;
- `now: logprobs alone`: `rlpost.logprobs.token_logprobs` (the same without the entropy).
On CUDA the `now` rows run the per-chunk functions compiled (`rlpost.logprobs.KERNELS`, torch.compile), and one
more row, `now, eager: logprobs and entropy`, runs them as the CPU does, without compiling.

The bound: the least memory traffic the work needs, reading the logits in the forward (`dtype` bytes per entry)
and reading them again and writing their gradient in the backward (2 x `dtype` bytes), at the device's memory
traffic rate: twice the copy bandwidth (`copy_` of 1 GiB by default, measured here: a copy reads and writes each
byte). Median (min-max) of `--reps` after one warm-up; the GPU timed with CUDA events.
"""

from __future__ import annotations

import argparse
import statistics
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
    time_reps,
)
from rlpost import logprobs as lp


class BeforeLogprobs(torch.autograd.Function):
    """The token logprobs as the learner computed them before (the reference row): chunked fp32 log_softmax at the
    targets; the backward recomputes the whole softmax from the logits."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        step = lp._chunk_rows(logits.shape[1])
        for s in range(0, logits.shape[0], step):
            x = logits[s:s + step].float() / temperature
            out[s:s + step] = x.gather(-1, targets[s:s + step, None]).squeeze(-1) - torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        step = lp._chunk_rows(logits.shape[1])
        for s in range(0, logits.shape[0], step):
            g = grad_out[s:s + step, None].float()
            chunk = -torch.softmax(logits[s:s + step].float() / ctx.temperature, dim=-1) * g
            chunk.scatter_add_(-1, targets[s:s + step, None], g)
            grad[s:s + step] = (chunk / ctx.temperature).to(grad.dtype)
        return grad, None, None


def entropy_pass(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The entropy in a pass of its own (the learner's way before): chunked log_softmax, -sum p log p."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = lp._chunk_rows(flat.shape[1])
    for s in range(0, flat.shape[0], step):
        logp = torch.log_softmax(flat[s:s + step].float() / temperature, dim=-1)
        out[s:s + step] = -(logp.exp() * logp).sum(-1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=8192, help="completion tokens in the micro-batch")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="the logits' dtype")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--copy-mb", type=int, default=1024, help="buffer size of the copy-bandwidth measurement")
    add_results_argument(parser)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = (torch.randn(1, args.tokens, args.vocab, device=args.device) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (1, args.tokens), device=args.device)
    t = args.temperature

    flat_logits, flat_targets = logits.view(-1, args.vocab), targets.view(-1)

    def before() -> None:
        BeforeLogprobs.apply(flat_logits, flat_targets, t).sum().backward()
        entropy_pass(logits.detach(), t).sum().item()
        logits.grad = None

    def now(kernels: lp.ChunkKernels | None = lp.KERNELS) -> None:
        out, entropy = lp.token_logprobs_and_entropy(logits, targets, t, kernels=kernels)
        out.sum().backward()
        entropy.sum().item()
        logits.grad = None

    def alone() -> None:
        lp.token_logprobs(logits, targets, t).sum().backward()
        logits.grad = None

    # The two ways agree before anything is timed: logprobs, their gradient, the entropy.
    x = logits.detach().requires_grad_()
    out, fused = lp.token_logprobs_and_entropy(x, targets, t)
    (grad,) = torch.autograd.grad(out.sum(), x)
    y = logits.detach().requires_grad_()
    ref = BeforeLogprobs.apply(y.view(-1, args.vocab), flat_targets, t)
    (ref_grad,) = torch.autograd.grad(ref.sum(), y)
    torch.testing.assert_close(out.view(-1), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(fused.view(-1), entropy_pass(logits.detach(), t), rtol=1e-3, atol=1e-3)
    del x, y, out, fused, grad, ref, ref_grad

    bandwidth = copy_bandwidth_gbs(args.copy_mb * 2**20, device=args.device) * 1e9
    entry = logits.element_size()
    bound_s = 3 * entry * logits.numel() / (2 * bandwidth)  # a copy reads and writes each byte it copies
    runs = [("before: logprobs, then an entropy pass", time_reps(before, args.device, args.reps)),
            ("now: logprobs and entropy", time_reps(now, args.device, args.reps)),
            ("now: logprobs alone", time_reps(alone, args.device, args.reps))]
    compiled = args.device.startswith("cuda") and not lp.KERNELS.failed
    if compiled:
        runs.append(("now, eager: logprobs and entropy", time_reps(lambda: now(None), args.device, args.reps)))
    reference = statistics.median(runs[0][1])
    rows = [[name, median_range([x * 1e3 for x in times], ".1f"), f"{bound_s / statistics.median(times):.2f}",
             f"{reference / statistics.median(times):.2f}"] for name, times in runs]
    header = ["work (forward + backward)", "ms median (min-max)", "vs bandwidth bound", "speed vs before"]
    table = markdown_table(header, rows)
    details = (f"{args.tokens} tokens x {args.vocab} vocabulary, {args.dtype} logits, T={t:g}, on "
               f"{machine(args.device)}; copy bandwidth {bandwidth / 1e9:.0f} GB/s, so the bound (read the logits "
               f"twice, write their gradient once) is {bound_s * 1e3:.1f} ms; per-chunk functions "
               f"{'compiled' if compiled else 'eager'}")
    print(details)
    print(table)
    if args.results:
        append_section(Path(args.results), "Vocabulary-wide work of a micro-batch: logprobs and entropy "
                       "(`bench/vocab.py`)", details, command_line("bench.vocab"), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
