"""Weight-sync benchmark: the sync path of a real run (DeepSpeed learner actor -> engine actor, through
`WeightSync`), against physical references measured in the same run.

    python -m bench.sync --model /path/to/SmolLM2-135M-Instruct --qwen05b /tmp/qwen2-0.5b-random
    python -m bench.sync --cluster split --model ...     # 2 GPUs: learner on one, vLLM on the other, NCCL
    python -m bench.sync --cluster cpu                   # CPU: HF engine, gloo; the embedded SmolLM2 by default

`--cluster single_gpu` (default): colocated, CUDA IPC; reference = the device-to-device `copy_` bandwidth.
`--cluster split`: NCCL broadcast between the learner's GPU and the engine's; reference = a plain NCCL broadcast
of a 1 GiB buffer between two GPUs (two processes, one GPU each), so the ratio is the share of the link the sync
gets after packing and loading.
`--cluster cpu`: learner and HF engine in separate CPU processes, gloo broadcast over loopback; reference = the CPU
`copy_` bandwidth (the engine's side is the same memory system).

For each model and bucket size: `transfer` is the learner's send loop with the engine awake (pack, move, the
engine's copy into its parameters), timed by the sender; `cycle` is what a training step pays, timed by the
driver: wake the engine's weights, transfer, wake its KV cache (the engine was put to sleep before, as after a
rollout; CPU engines do not sleep). GB/s = weight bytes / transfer seconds; the ratio is against the reference.
An IPC sync writes every byte twice (into the shared slot, then into the engine's parameters), so 0.5x of `copy_`
is this design's ceiling; `floor` measures those two copies for the model's tensors inside one process (one `cat`
into a buffer, one `_foreach_copy_` out of it, CUDA events), i.e. the sync minus processes and signalling.
Warm-up excluded; median (min-max) of --reps repetitions.
`--qwen05b` builds a randomly initialised Qwen2.5-0.5B-shaped model there if the folder is missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.common import (
    add_results_argument,
    append_section,
    build_qwen05b,
    command_line,
    copy_bandwidth_gbs,
    free_port,
    machine,
    markdown_table,
    median_range,
    time_reps,
)


def two_copy_floor_s(model_dir: str, bucket_mb: int, reps: int = 10) -> float:
    """The IPC design's floor on this GPU for this model: per bucket, one `cat` of its tensors into a buffer and
    one `_foreach_copy_` out of it into separate parameter tensors, in one process (no signalling), CUDA events.
    The model's real shapes, bf16, random values; median seconds of `reps` full passes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlpost.sync.buckets import TensorSpec, flatten, plan_buckets, unflatten

    with torch.device("meta"):
        shapes = [(n, tuple(p.shape)) for n, p in AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(model_dir)).named_parameters()]
    src = {n: torch.randn(s, dtype=torch.bfloat16, device="cuda") for n, s in shapes}
    dst = {n: torch.empty_like(t) for n, t in src.items()}
    plan = plan_buckets([TensorSpec(n, s, torch.bfloat16) for n, s in shapes], bucket_mb * 2**20)
    buffer = torch.empty(max(b.numel for b in plan), dtype=torch.bfloat16, device="cuda")

    def one_pass() -> None:
        for bucket in plan:
            flat = flatten([src[s.name] for s in bucket.specs], bucket, out=buffer[:bucket.numel])
            named = unflatten(flat, bucket)
            torch._foreach_copy_([dst[n] for n, _ in named], [t for _, t in named])

    return statistics.median(time_reps(one_pass, "cuda", reps))


def _nccl_broadcast_worker(rank: int, port: int, nbytes: int, reps: int, result) -> None:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buf = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    for _ in range(3):  # warm-up: communicator set-up, first-touch
        dist.broadcast(buf, 0)
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dist.broadcast(buf, 0)
    end.record()
    torch.cuda.synchronize()
    if rank == 1:  # the receiver's view: its clock stops when the last byte has arrived
        result.put(nbytes / (start.elapsed_time(end) / 1e3 / reps) / 1e9)
    dist.destroy_process_group()


def nccl_broadcast_gbs(nbytes: int = 2**30, reps: int = 20) -> float:
    """GPU 0 -> GPU 1 bandwidth of a plain NCCL broadcast (GB/s), in two fresh processes."""
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=_nccl_broadcast_worker, args=(r, port, nbytes, reps, result)) for r in range(2)]
    for p in procs:
        p.start()
    gbs = result.get(timeout=300)
    for p in procs:
        p.join()
    return gbs


def bench_model(model_dir: str, cluster: str, bucket_sizes: list[int], reps: int, ref_gbs: float
                ) -> list[list[str]]:
    cpu = cluster == "cpu"
    from rlpost.cluster.groups import WeightSync
    from rlpost.train import compose_config
    from rlpost.trainer import Trainer

    cfg = compose_config([
            f"cluster={'debug_cpu' if cpu else cluster}", f"model.path={model_dir}",
            "trainer.run_dir=/tmp/rlpost-bench-sync", "trainer.prompts_per_step=1", "algo.group_size=2",
            "learner.micro_batch_size=2", "rollout.enforce_eager=true", "rollout.gpu_memory_utilization=0.3",
            "data.limit=16", "rollout.num_engines=1", "learner.num_ranks=1"])
    trainer = Trainer(cfg, model_dir, "/tmp/rlpost-bench-sync")
    trainer.start()
    rows = []
    try:
        for mb in bucket_sizes:
            sync = WeightSync(trainer.learners, trainer.rollout, trainer.sync.transport, mb, 300.0)
            sync.sync()  # warm-up: first touch of the IPC slots, allocator growth
            transfer, cycle = [], []
            for _ in range(reps):
                transfer.append(sync.sync()["sync/seconds"])
            gb = sync.sync()["sync/gb"]
            for _ in range(reps):
                trainer.rollout.sleep()  # a no-op for engines without sleep mode (CPU)
                t = time.perf_counter()
                sync.sync()
                cycle.append(time.perf_counter() - t)
            med = statistics.median(transfer)
            floor = "-" if cluster != "single_gpu" else f"{two_copy_floor_s(model_dir, mb):.4f}"
            rows.append([Path(model_dir).name, f"{gb:.3f}", str(mb), str(sync.num_buckets),
                         median_range(transfer, ".4f"), f"{gb / med:.1f}", median_range(cycle), floor,
                         f"{gb / med / ref_gbs:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    finally:
        trainer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("KIT_MODEL", ""),
                        help="SmolLM2-135M-Instruct folder (default $KIT_MODEL, else the embedded one)")
    parser.add_argument("--qwen05b", default="", help="folder of a ~0.5B Qwen2 model (built there if missing)")
    parser.add_argument("--buckets", default="32,128,512", help="bucket sizes in MB")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cluster", default="single_gpu", choices=["single_gpu", "split", "cpu"])
    parser.add_argument("--reference-only", action="store_true", help="measure the reference bandwidth, then stop")
    add_results_argument(parser)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from rlpost.models import resolve_model_path

    if args.cluster == "split":
        ref_name, ref_gbs = "NCCL broadcast GPU0->GPU1", nccl_broadcast_gbs()
    elif args.cluster == "cpu":
        ref_name, ref_gbs = "CPU copy_", copy_bandwidth_gbs(2**28, 10, "cpu")
    else:
        ref_name, ref_gbs = "copy_", copy_bandwidth_gbs()
    device = machine("cpu" if args.cluster == "cpu" else "cuda")
    print(f"{device}: {ref_name} {ref_gbs:.0f} GB/s", flush=True)
    if args.reference_only:
        return
    smollm = resolve_model_path(args.model)
    models = [smollm] + ([build_qwen05b(args.qwen05b, smollm)] if args.qwen05b else [])
    header = ["model", "GB", "bucket MB", "buckets", "transfer s median (min-max)", "GB/s",
              "cycle s (wake+transfer+wake)", "floor s (2 copies, 1 process)", f"ratio vs {ref_name}"]
    rows = []
    for model in models:
        rows += bench_model(model, args.cluster, [int(x) for x in args.buckets.split(",")], args.reps, ref_gbs)
    ray.shutdown()
    transport = {"split": "nccl", "cpu": "gloo"}.get(args.cluster, "ipc")
    title = f"{ref_name} on {device}: {ref_gbs:.0f} GB/s; sync transport {transport}"
    table = markdown_table(header, rows)
    print(f"\n{title}\n\n{table}")
    if args.results:
        append_section(Path(args.results), "Weight sync: seconds and GB/s per bucket size", title,
                       command_line("bench.sync"), table)


if __name__ == "__main__":
    main()
