"""Learner benchmark: tokens/s and MFU of rlpost's training step under DeepSpeed ZeRO 0, 2 and 3, on one device.

    python -m bench.learner --qwen05b /tmp/qwen2-0.5b-random --tokenizer $KIT_MODEL          # GPU, the 0.5B config
    python -m bench.learner --model TINY_DIR --device cpu --seqs 4 --micro 2 --seq-len 64    # CPU smoke run
    python -m bench.learner --model M --stages 0 --seqs 256 --micro 32 --seq-len 640 --lengths rollout \
        --orders sorted,arrival     # a rollout batch's spread of lengths, micro-batches by length vs as they came
    ... --results bench/RESULTS.md    # also append a section (date, machine, versions, command, table) there

What is timed is the product's own step: `LearnerRank.train_step` (the class a learner actor runs) on one
mini-batch of `--seqs` sequences of exactly `--seq-len` tokens (a quarter prompt, the rest completion; with `--lengths
rollout` each sequence's length is drawn uniformly from [seq-len/4, seq-len], as a rollout batch spreads), micro-batches
of `--micro`, one optimizer step: forward, GRPO's clipped loss, backward, gradient clipping, AdamW (fp32 masters;
bf16 compute on the GPU). The KL term is off, so no reference model runs. Token ids and advantages are random
with a fixed seed. Each ZeRO stage runs in a fresh process (DeepSpeed initialises its process group once per
process) holding a world of one rank: stages 2 and 3 then shard nothing, so what they show is their bookkeeping
cost (bucketed gradient reduction, parameter gathering) against stage 0 on the same device.

MFU = 6 x parameters x trained tokens / step seconds / peak, the usual forward + backward matmul count (attention's
own FLOPs left out, the tied embedding counted once as the LM head). The peak is measured in the same run: a bf16
8192^3 matmul on the GPU (fp32 1024^3 on the CPU), CUDA events, best of several. Warm-up steps excluded; median
(min-max) of `--reps` steps; the clock stops after `torch.cuda.synchronize()`. Tokens are the non-pad tokens the
step trained on (`learner/tokens`, prompt and completion: all of them go through forward and backward). Peak memory
is `torch.cuda.max_memory_allocated` of the stage's process (GPU only).

Tied: `--tied 0,0.5` also times steps in which that share of the sequences belong to tied groups (zero advantage,
`algo.skip_tied_groups`): the learner computes only the others (and the few that even the ranks' shares out), so
tokens/step counts what it trained; the last column compares the whole batch's tokens per second with the first
row's, what a run gains (without tied sequences it is the tokens/s ratio).

Order: `sorted` is rlpost's (`rlpost.packing.length_order`: a rank's sequences sorted by length before they are cut
into micro-batches); `arrival` times the same step with that sort switched off in the worker process, the layout
before it. Padding: the share of the padded micro-batches' positions that are not tokens (what the forward and
backward compute for nothing).

`--profile N`: one more step of each stage under `torch.profiler`, after the timed ones, summarised as two tables:
its operators' self time (device time on the GPU, CPU time on the CPU) grouped into kinds of work, and the N
operators that took the most.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    add_results_argument,
    append_section,
    build_qwen05b,
    command_line,
    free_port,
    machine,
    markdown_table,
    median_range,
    time_reps,
)

REPO = Path(__file__).resolve().parent.parent


def matmul_peak_tflops(device: str, reps: int = 10) -> float:
    """Measured dense matmul throughput (TFLOP/s): bf16 8192^3 on a GPU, fp32 1024^3 on the CPU; best rep."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    operands = [torch.randn(n, n, dtype=dtype, device=device) for _ in range(2)]
    best = min(time_reps(lambda: operands[0] @ operands[1], device, reps))  # its warm-up call selects the kernel
    operands.clear()
    if device == "cuda":
        torch.cuda.empty_cache()  # the stages run in other processes on the same GPU: leave them its memory
    return 2 * n**3 / best / 1e12


def mfu(params: int, tokens: int, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: 6 x params x tokens of work done in `seconds`, as a share of the peak."""
    return 6 * params * tokens / seconds / (peak_tflops * 1e12)


def synthetic_items(num: int, seq_len: int, vocab: int, seed: int = 0, lengths: str = "fixed") -> list:
    """`num` training items of `seq_len` tokens (`lengths="fixed"`) or of a length drawn uniformly from
    [seq_len / 4, seq_len] (`"rollout"`); a quarter of each is prompt, the rest completion."""
    import numpy as np

    from rlpost.experience import TrainItem

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num):
        n = seq_len if lengths == "fixed" else int(rng.integers(seq_len // 4, seq_len + 1))
        prompt, completion = n // 4, n - n // 4
        items.append(TrainItem(prompt_ids=rng.integers(10, vocab, prompt).tolist(),
                               completion_ids=rng.integers(10, vocab, completion).tolist(),
                               rollout_logprobs=[-1.0] * completion,
                               advantages=rng.standard_normal(completion).tolist()))
    return items


# Kinds of work, by operator name (first match wins): what `--profile` groups the step's self time into. The
# vocabulary-wide work is whatever runs inside rlpost.logprobs' profiler range (`profiled_step` names those
# operators "rlpost::vocabulary/<operator>"), so its elementwise kernels are not counted as "other".
PROFILE_KINDS = [
    ("vocabulary (logprobs, entropy)", ("rlpost::vocabulary",)),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("copy / cast", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous")),
]


def profile_kinds(op_times: list[tuple[str, float]]) -> list[tuple[str, float, float]]:
    """(kind, seconds, share of the total) of operators' self times, kinds in PROFILE_KINDS order, then "other"."""
    seconds = dict.fromkeys([k for k, _ in PROFILE_KINDS] + ["other"], 0.0)
    for name, s in op_times:
        kind = next((k for k, keys in PROFILE_KINDS if any(key in name for key in keys)), "other")
        seconds[kind] += s
    total = sum(seconds.values()) or 1.0
    return [(k, s, s / total) for k, s in seconds.items()]


def profiled_step(step: Callable[[], object], cuda: bool) -> list[tuple[str, float]]:
    """(operator, self seconds) of one call of `step` under torch.profiler: device time on the GPU, CPU time on
    the CPU. Only operators (not the kernels they launch, which carry the same device time again); an operator
    run inside rlpost.logprobs' profiler range is named "rlpost::vocabulary/<operator>"."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from rlpost.logprobs import PROFILE_SCOPE

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()

    def name(event) -> str:
        scope = event
        while scope is not None and scope.name != PROFILE_SCOPE:
            scope = scope.cpu_parent
        return event.name if scope is None or scope is event else f"{PROFILE_SCOPE}/{event.name}"

    times: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CPU:
            key = name(e)
            times[key] = times.get(key, 0.0) + (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6
    return sorted([x for x in times.items() if x[1] > 0], key=lambda x: -x[1])


def padding_share(micro_batches: list[list]) -> float:
    """Share of right-padded micro-batches' positions that hold no token (each is as wide as its longest)."""
    lengths = [[len(it.prompt_ids) + len(it.completion_ids) for it in m] for m in micro_batches]
    positions = sum(len(m) * max(m) for m in lengths)
    return 1 - sum(map(sum, lengths)) / positions


def run_stage(args: argparse.Namespace) -> dict:
    """One ZeRO stage in this process: build a LearnerRank, run warm-up + timed steps, return the numbers."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from rlpost.learner import actor
    from rlpost.learner.actor import LearnerRank
    from rlpost.train import compose_config
    from rlpost.trainer import deal_minibatches

    if args.order == "arrival":  # the bench's instrument: the layout before rlpost sorted micro-batches by length
        actor.length_order = lambda lengths, unit=1: list(range(len(lengths)))

    cuda = args.device == "cuda"
    cfg = compose_config([
        # split: the learner alone on its GPU (colocated ranks empty the CUDA cache after every step).
        f"cluster={'split' if cuda else 'debug_cpu'}", f"model.path={args.model}",
        f"model.dtype={'bfloat16' if cuda else 'float32'}", f"learner.zero_stage={args.stage}",
        # One train_step = one optimizer step over --seqs sequences; no KL, so no reference model is loaded.
        f"learner.micro_batch_size={args.micro}", f"trainer.prompts_per_step={args.seqs}", "algo=grpo",
        "algo.group_size=1", "algo.num_minibatches=1", "algo.epochs=1", "algo.kl_coef=0", "learner.num_ranks=1",
        f"learner.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"])
    rank = LearnerRank(OmegaConf.to_container(cfg, resolve=True), 0, 1, args.model, args.warmup + args.reps)
    rank.setup("127.0.0.1", free_port())
    vocab = len(AutoTokenizer.from_pretrained(args.model))
    items = synthetic_items(args.seqs, args.seq_len, vocab, lengths=args.lengths)
    batch_tokens = sum(len(it.prompt_ids) + len(it.completion_ids) for it in items)
    for it in items[:round(args.tied_share * len(items))]:  # their lengths are random: no bias from taking the first
        it.tied, it.advantages = True, [0.0] * len(it.completion_ids)
    (batch,), = deal_minibatches(items, 1, 1)  # the tied leave the mini-batch, and stay in its counts
    padding = padding_share(rank._micro_batches(batch.items))
    # ZeRO-3 leaves empty placeholders in the module; ds_numel is the full size. Tied weights are counted once.
    params = sum(getattr(p, "ds_numel", p.numel()) for p in rank.engine.module.parameters() if p.requires_grad)
    seconds, tokens = [], 0
    for step in range(args.warmup + args.reps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        metrics = rank.train_step([batch], 0.0)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds.append(time.perf_counter() - t)
        tokens = int(metrics["learner/tokens"])
    peak_mem = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    profile = profiled_step(lambda: rank.train_step([batch], 0.0), cuda) if args.profile else []
    return {"stage": args.stage, "order": args.order, "tied": args.tied_share, "params": params, "tokens": tokens,
            "batch_tokens": batch_tokens, "seconds": seconds, "peak_mem_gb": peak_mem, "padding": padding,
            "profile": profile}


def profile_tables(result: dict, top: int, clock: str) -> str:
    """The `--profile` tables of one stage's result: self time by kind of work, then the `top` operators."""
    total = sum(s for _, s in result["profile"])
    kinds = markdown_table(["kind of work", f"self {clock} s", "share"],
                           [[k, f"{s:.4f}", f"{share:.2f}"] for k, s, share in profile_kinds(result["profile"])])
    ops = markdown_table(["operator", f"self {clock} s", "share"],
                         [[name.replace("|", "/"), f"{s:.4f}", f"{s / total:.2f}"]
                          for name, s in result["profile"][:top]])
    return (f"\nZeRO-{result['stage']} ({result['order']}, tied {result['tied']:g}), one profiled step: {total:.3f} s "
            f"of operator self {clock} time\n\n{kinds}\n\n{ops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model folder (default: --qwen05b)")
    parser.add_argument("--qwen05b", default="", help="folder of a ~0.5B Qwen2 model (built there if missing)")
    parser.add_argument("--tokenizer", default=os.environ.get("KIT_MODEL", ""),
                        help="tokenizer for --qwen05b (default $KIT_MODEL, else the embedded SmolLM2)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--stages", default="0,2,3")
    parser.add_argument("--seqs", type=int, default=32, help="sequences per optimizer step")
    parser.add_argument("--micro", type=int, default=8, help="sequences per forward/backward")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--lengths", choices=("fixed", "rollout"), default="fixed",
                        help="fixed: every sequence --seq-len tokens; rollout: uniform in [seq-len/4, seq-len]")
    parser.add_argument("--orders", default="sorted",
                        help="micro-batch orders to time, comma-separated: sorted (rlpost's), arrival (sort off)")
    parser.add_argument("--tied", default="0",
                        help="shares of the sequences in tied groups (algo.skip_tied_groups), comma-separated")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="learner.gradient_checkpointing")
    add_results_argument(parser)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile one more step per stage: time by kind of work and the top N operators")
    parser.add_argument("--stage", type=int, default=-1, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--order", default="sorted", help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--tied-share", type=float, default=0.0, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.seqs % args.micro:
        parser.error(f"--micro {args.micro} must divide --seqs {args.seqs}")
    orders = args.orders.split(",")
    if not set(orders) <= {"sorted", "arrival"}:
        parser.error(f"--orders {args.orders}: a comma-separated list of sorted and arrival")
    try:
        tied = [float(x) for x in args.tied.split(",")]
    except ValueError:
        tied = [-1.0]
    if not all(0 <= t < 1 for t in tied):
        parser.error(f"--tied {args.tied}: comma-separated shares in [0, 1)")
    if not args.model:
        if not args.qwen05b:
            parser.error("give --model or --qwen05b")
        from rlpost.models import resolve_model_path

        args.model = build_qwen05b(args.qwen05b, resolve_model_path(args.tokenizer))
    if args.stage >= 0:
        print("RESULT " + json.dumps(run_stage(args)), flush=True)
        return

    peak = matmul_peak_tflops(args.device)
    device = machine(args.device)
    print(f"{device}: measured matmul peak {peak:.4g} TFLOP/s", flush=True)
    results = []
    for stage, order, share in ((int(s), o, t) for s in args.stages.split(",") for o in orders for t in tied):
        cmd = [sys.executable, "-m", "bench.learner", *sys.argv[1:], "--model", args.model, "--stage", str(stage),
               "--order", order, "--tied-share", str(share)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"learner bench: ZeRO-{stage} ({order}, tied {share}) failed (exit {proc.returncode}); "
                             "its output is above")
        results.append(json.loads(line.removeprefix("RESULT ")))
    header = ["ZeRO", "params M", "seqs x len", "micro", "order", "tied", "tokens/step", "padding",
              "step s median (min-max)", "tokens/s", "TFLOP/s", "peak mem GB", "MFU", "batch tokens/s vs row 1"]
    first = results[0]["batch_tokens"] / statistics.median(results[0]["seconds"])
    shape = f"{args.seqs} x {args.seq_len}" + (" (rollout lengths)" if args.lengths == "rollout" else "")
    rows = []
    for r in results:
        med = statistics.median(r["seconds"])
        tps, tflops = r["tokens"] / med, 6 * r["params"] * r["tokens"] / med / 1e12
        rows.append([str(r["stage"]), f"{r['params'] / 1e6:.0f}", shape, str(args.micro), r["order"], f"{r['tied']:g}",
                     str(r["tokens"]), f"{r['padding']:.2f}", median_range(r["seconds"]), f"{tps:,.0f}",
                     # significant digits below 1: the CPU's tiny model would print 0.0 and 0.000
                     f"{tflops:.1f}" if tflops >= 1 else f"{tflops:.3g}",
                     "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}",
                     f"{mfu(r['params'], r['tokens'], med, peak):.3g}", f"{r['batch_tokens'] / med / first:.2f}"])
    title = (f"{device}; {Path(args.model).name}; measured matmul peak {peak:.4g} TFLOP/s; "
             f"{'gradient checkpointing, ' if args.gradient_checkpointing else ''}warm-up {args.warmup}, "
             f"{args.reps} timed steps")
    table = markdown_table(header, rows)
    print(f"\n{title}\n\n{table}")
    for r in results:
        if r["profile"]:
            print(profile_tables(r, args.profile, "device" if args.device == "cuda" else "CPU"))
    if args.results:
        append_section(Path(args.results), "Learner: tokens/s and MFU of `LearnerRank.train_step`", title,
                       command_line("bench.learner"), table)


if __name__ == "__main__":
    main()
