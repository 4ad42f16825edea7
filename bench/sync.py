"""Weight-sync benchmark on one GPU: the colocated CUDA-IPC path of a real run (DeepSpeed learner actor ->
vLLM engine actor, through `WeightSync`), against the device-to-device copy bandwidth measured in the same run.

    python bench/sync.py --model /path/to/SmolLM2-135M-Instruct --qwen05b /tmp/qwen2-0.5b-random

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


def bench_model(model_dir: str, bucket_sizes: list[int], reps: int, copy_gbs: float) -> list[list[str]]:
    from hydra import compose, initialize_config_dir

    from rlpost.cluster.groups import WeightSync
    from rlpost.train import CONFIG_DIR
    from rlpost.trainer import Trainer

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "cluster=single_gpu", f"model.path={model_dir}", "trainer.run_dir=/tmp/rlpost-bench-sync",
            "trainer.prompts_per_step=1", "algo.group_size=2", "learner.micro_batch_size=2",
            "rollout.enforce_eager=true", "rollout.gpu_memory_utilization=0.3", "data.limit=16"])
    trainer = Trainer(cfg, model_dir, "/tmp/rlpost-bench-sync")
    trainer.start()
    rows = []
    try:
        for mb in bucket_sizes:
            sync = WeightSync(trainer.learners, trainer.rollout, "ipc", mb, 300.0)
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
                         f"{gb / med / copy_gbs:.2f}"])
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
    args = parser.parse_args()

    import ray
    import torch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    copy_gbs = copy_bandwidth_gbs()
    print(f"device {torch.cuda.get_device_name()}: copy_ bandwidth {copy_gbs:.0f} GB/s (1 GiB buffer)", flush=True)
    models = [args.model] + ([build_qwen05b(args.qwen05b, args.model)] if args.qwen05b else [])
    ray.init(address="local", include_dashboard=False)
    header = ["model", "GB", "bucket MB", "buckets", "transfer s median (min-max)", "GB/s",
              "cycle s (wake+transfer+wake)", "ratio vs copy_"]
    rows = []
    for model in models:
        rows += bench_model(model, [int(x) for x in args.buckets.split(",")], args.reps, copy_gbs)
    ray.shutdown()
    print(f"\ncopy_ bandwidth on {torch.cuda.get_device_name()}: {copy_gbs:.0f} GB/s\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
