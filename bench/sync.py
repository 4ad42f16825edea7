"""Weight-sync benchmark: the sync path of a real run (DeepSpeed learner actor -> vLLM engine actor, through
`WeightSync`), against a physical reference measured in the same run.

    python bench/sync.py --model /path/to/SmolLM2-135M-Instruct --qwen05b /tmp/qwen2-0.5b-random
    python bench/sync.py --cluster split --model ...     # 2 GPUs: learner on one, vLLM on the other, NCCL

`--cluster single_gpu` (default): colocated, CUDA IPC; reference = the device-to-device copy bandwidth.
`--cluster split`: NCCL broadcast between the learner's GPU and the engine's; reference = a plain NCCL broadcast
of a 1 GiB buffer between two GPUs (two processes, one GPU each), so the ratio is the share of the link the sync
gets after packing and `load_weights`.

For each model and bucket size: `transfer` is the learner's send loop with the engine awake (pack, copy into the
IPC slot, engine `load_weights`), timed by the sender; `cycle` is what a training step pays, timed by the driver:
wake the engine's weights, transfer, wake its KV cache (the engine was put to sleep before, as after a rollout).
GB/s = weight bytes / transfer seconds. The physical reference is one `copy_` of a 1 GiB buffer on the same GPU
(timed with CUDA events): an IPC sync moves every byte at least once more than that copy (pack, then load), so
0.5x of it is the ceiling for this design. Warm-up excluded; median (min-max) of --reps repetitions.
`--qwen05b` builds a randomly initialised Qwen2.5-0.5B-shaped model there if the folder is missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def copy_bandwidth_gbs(nbytes: int = 2**30, reps: int = 20) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
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
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=_nccl_broadcast_worker, args=(r, port, nbytes, reps, result)) for r in range(2)]
    for p in procs:
        p.start()
    gbs = result.get(timeout=300)
    for p in procs:
        p.join()
    return gbs


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


def bench_model(model_dir: str, cluster: str, bucket_sizes: list[int], reps: int, ref_gbs: float
                ) -> list[list[str]]:
    from rlpost.cluster.groups import WeightSync
    from rlpost.train import compose_config
    from rlpost.trainer import Trainer

    cfg = compose_config([
            f"cluster={cluster}", f"model.path={model_dir}", "trainer.run_dir=/tmp/rlpost-bench-sync",
            "trainer.prompts_per_step=1", "algo.group_size=2", "learner.micro_batch_size=2",
            "rollout.enforce_eager=true", "rollout.gpu_memory_utilization=0.3", "data.limit=16"])
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
                trainer.rollout.sleep()
                t = time.perf_counter()
                sync.sync()
                cycle.append(time.perf_counter() - t)
            med = statistics.median(transfer)
            rows.append([Path(model_dir).name, f"{gb:.3f}", str(mb), str(sync.num_buckets),
                         f"{med:.4f} ({min(transfer):.4f}-{max(transfer):.4f})", f"{gb / med:.1f}",
                         f"{statistics.median(cycle):.3f} ({min(cycle):.3f}-{max(cycle):.3f})",
                         f"{gb / med / ref_gbs:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    finally:
        trainer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("KIT_MODEL", ""), help="SmolLM2-135M-Instruct folder")
    parser.add_argument("--qwen05b", default="", help="folder of a ~0.5B Qwen2 model (built there if missing)")
    parser.add_argument("--buckets", default="32,128,512", help="bucket sizes in MB")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cluster", default="single_gpu", choices=["single_gpu", "split"])
    parser.add_argument("--reference-only", action="store_true", help="measure the reference bandwidth, then stop")
    args = parser.parse_args()

    import ray
    import torch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.cluster == "split":
        ref_name, ref_gbs = "NCCL broadcast GPU0->GPU1", nccl_broadcast_gbs()
    else:
        ref_name, ref_gbs = "copy_", copy_bandwidth_gbs()
    print(f"device {torch.cuda.get_device_name()}: {ref_name} {ref_gbs:.0f} GB/s (1 GiB buffer)", flush=True)
    if args.reference_only:
        return
    models = [args.model] + ([build_qwen05b(args.qwen05b, args.model)] if args.qwen05b else [])
    ray.init(address="local", include_dashboard=False)
    header = ["model", "GB", "bucket MB", "buckets", "transfer s median (min-max)", "GB/s",
              "cycle s (wake+transfer+wake)", f"ratio vs {ref_name}"]
    rows = []
    for model in models:
        rows += bench_model(model, args.cluster, [int(x) for x in args.buckets.split(",")], args.reps, ref_gbs)
    ray.shutdown()
    print(f"\n{ref_name} on {torch.cuda.get_device_name()}: {ref_gbs:.0f} GB/s; sync transport "
          f"{'nccl' if args.cluster == 'split' else 'ipc'}\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
