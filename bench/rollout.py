"""Rollout benchmark: generation throughput of rlpost's vLLM engine actor against plain `vllm.LLM` in this process,
and against the decode memory-bandwidth bound, at several batch sizes, on one GPU.

    python -m bench.rollout --model $KIT_MODEL --qwen05b /tmp/qwen2-0.5b-random

Ours is the product's engine exactly as a `cluster=single_gpu` run builds it (`RolloutGroup`: a Ray actor holding a
`VLLMEngine`, sleep mode on, prefix caching on, processed logprobs), called the way the trainer calls it:
`RolloutGroup.generate(prompt_ids, SamplingParams)` (a `generate` call on each engine actor, a share of the prompts
each), which returns rlpost `Sample`s with a logprob per token. `--engines-per-gpu K` puts K engine actors on the
GPU (`rollout.engines_per_gpu`): then ours/peer is what K engines gain over one where decode is host-bound.
`--kv-cache-gb` fixes every engine's KV cache (`rollout.kv_cache_gb`; ours then build side by side) on both sides.
The peer is `vllm.LLM` built in this process with the same engine arguments (dtype, memory share,
max_model_len, CUDA graphs or eager, sleep mode, prefix caching, logprobs mode), given the same token-id prompts and
the same per-request sampling parameters (including `logprobs=0`, the sampled token's logprob, which ours asks
for too). So ours/peer is the cost of the actor layer: the Ray call, argument and result transfer, and turning
vLLM's outputs into `Sample`s. Both engines stay up together, each with `--gpu-memory-utilization` of the GPU,
and are timed in alternation so that drift hits both alike.

Work: B distinct random prompts of `--prompt-tokens` tokens (fixed seed), `--new-tokens` sampled tokens each at
temperature 1 with EOS ignored, so every request decodes exactly `--new-tokens` steps. tokens/s = B x new tokens /
wall seconds of the call. Bound: decoding must read every weight once per step, so a step takes at least
weight bytes / copy bandwidth, where the copy bandwidth is `copy_` of a 1 GiB buffer measured in this run (bytes
copied per second; a read-only stream may go up to ~2x that, and KV-cache reads are ignored, so the bound is a
yardstick rather than an attainable ceiling): bound tokens/s = B x copy bandwidth / weight bytes.
Warm-up excluded; median (min-max) of `--reps` calls per side.
"""

from __future__ import annotations

import argparse
import gc
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
    markdown_table,
    median_range,
)


def weight_bytes(model_dir: str, bytes_per_param: int = 2) -> int:
    """Bytes of the model's parameters in bf16 (tied embeddings once), from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters()) * bytes_per_param


def decode_bound_tokens_per_s(batch: int, weight_nbytes: int, copy_gbs: float) -> float:
    """Tokens/s if each decode step only had to stream the weights once at the copy bandwidth."""
    return batch * copy_gbs * 1e9 / weight_nbytes


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(10, vocab, size=(batch, length)).tolist()


def build_ours(model_dir: str, args: argparse.Namespace):
    """The engine actor as `cluster=single_gpu` builds it."""
    from omegaconf import OmegaConf

    from rlpost.cluster.engines import RolloutGroup
    from rlpost.cluster.groups import Placement
    from rlpost.cluster.ray_cluster import init_ray
    from rlpost.train import compose_config

    cfg = compose_config(["cluster=single_gpu", f"model.path={model_dir}", f"rollout.max_new_tokens={args.new_tokens}",
                          f"rollout.gpu_memory_utilization={args.gpu_memory_utilization}",
                          f"rollout.enforce_eager={str(args.enforce_eager).lower()}",
                          f"rollout.engines_per_gpu={args.engines_per_gpu}",
                          f"rollout.num_engines={args.engines_per_gpu}", f"rollout.kv_cache_gb={args.kv_cache_gb}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    init_ray("local", os.cpu_count() or 2)
    placement = Placement(plain)
    started = time.perf_counter()
    group = RolloutGroup(plain, model_dir, placement)
    group.ready()
    print(f"{Path(model_dir).name}: {args.engines_per_gpu} engine actor(s) up in {time.perf_counter() - started:.1f} s",
          flush=True)
    engine_args = dict(dtype=plain["model"]["dtype"], gpu_memory_utilization=args.gpu_memory_utilization,
                       max_model_len=plain["data"]["max_prompt_tokens"] + args.new_tokens,
                       enforce_eager=args.enforce_eager, enable_sleep_mode=plain["rollout"]["sleep_level"] > 0)
    if args.kv_cache_gb > 0:
        engine_args["kv_cache_memory_bytes"] = int(args.kv_cache_gb * 2**30)
    return group, placement, engine_args


def build_peer(model_dir: str, engine_args: dict):
    from vllm import LLM

    return LLM(model=model_dir, seed=0, enable_prefix_caching=True, logprobs_mode="processed_logprobs",
               **engine_args)


def time_both(group, peer, prompts: list[list[int]], new_tokens: int, reps: int) -> dict[str, list[float]]:
    """Wall seconds of `reps` calls of each side, alternating, after one warm-up call each."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm import TokensPrompt

    from rlpost.rollout.engine import SamplingParams

    ours_params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0, ignore_eos=True)
    # The per-request parameters ours builds from `ours_params` (see VLLMEngine.generate).
    peer_params = [VllmSamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=new_tokens, ignore_eos=True,
                                      logprobs=0, seed=i) for i in range(len(prompts))]
    peer_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    calls = {
        "ours": lambda: sum(len(s.completion_ids) for s in group.generate(prompts, ours_params)),
        "peer": lambda: sum(len(o.outputs[0].token_ids)
                            for o in peer.generate(peer_prompts, peer_params, use_tqdm=False)),
    }
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for rep in range(reps + 1):  # rep 0: warm-up of both
        for side, call in calls.items():
            t = time.perf_counter()
            tokens = call()
            if tokens != len(prompts) * new_tokens:
                raise RuntimeError(f"{side} generated {tokens} tokens, expected {len(prompts) * new_tokens}")
            if rep:
                times[side].append(time.perf_counter() - t)
    return times


def bench_model(model_dir: str, args: argparse.Namespace, copy_gbs: float) -> list[list[str]]:
    from transformers import AutoTokenizer

    group, placement, engine_args = build_ours(model_dir, args)
    peer = build_peer(model_dir, engine_args)
    nbytes = weight_bytes(model_dir)
    vocab = len(AutoTokenizer.from_pretrained(model_dir))
    rows = []
    try:
        for batch in args.batches:
            prompts = random_prompts(batch, args.prompt_tokens, vocab, seed=batch)
            times = time_both(group, peer, prompts, args.new_tokens, args.reps)
            ours_tps = [batch * args.new_tokens / t for t in times["ours"]]
            peer_tps = [batch * args.new_tokens / t for t in times["peer"]]
            bound = decode_bound_tokens_per_s(batch, nbytes, copy_gbs)
            med_ours, med_peer = statistics.median(ours_tps), statistics.median(peer_tps)
            rows.append([Path(model_dir).name, f"{nbytes / 1e9:.3f}", str(batch),
                         median_range(ours_tps, ",.0f"), median_range(peer_tps, ",.0f"), f"{bound:,.0f}",
                         f"{med_ours / med_peer:.3f}", f"{med_ours / bound:.3f}"])
            print(" | ".join(rows[-1]), flush=True)
    finally:
        group.shutdown()
        placement.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("KIT_MODEL", ""), help="SmolLM2-135M-Instruct folder")
    parser.add_argument("--qwen05b", default="", help="folder of a ~0.5B Qwen2 model (built there if missing)")
    parser.add_argument("--skip-model", action="store_true",
                        help="measure --qwen05b alone (--model then only lends its tokenizer to the build)")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="each engine's share")
    parser.add_argument("--kv-cache-gb", type=float, default=0.0,
                        help="each engine's KV cache in GiB, both sides (rollout.kv_cache_gb: ours then build side "
                             "by side); 0: what --gpu-memory-utilization leaves")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (default: graphs, as served)")
    parser.add_argument("--engines-per-gpu", type=int, default=1,
                        help="ours: this many engine actors on the GPU, each prompt batch split across them "
                             "(rollout.engines_per_gpu); the peer stays one vllm.LLM")
    add_results_argument(parser)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # this process holds CUDA before vLLM starts

    import ray
    import torch

    copy_gbs = copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: copy_ {copy_gbs:.0f} GB/s (1 GiB buffer)", flush=True)
    models = [] if args.skip_model else [args.model]
    if args.qwen05b:
        models.append(build_qwen05b(args.qwen05b, args.model))
    rows = []
    for model in models:  # one model at a time: both engines of a model share the GPU
        rows += bench_model(model, args, copy_gbs)
        gc.collect()  # the peer's engine (and its engine-core process) goes with its last reference
        torch.cuda.empty_cache()
    ray.shutdown()
    ours = f"rlpost, {args.engines_per_gpu} engine actor(s)," if args.engines_per_gpu > 1 else "rlpost actor"
    header = ["model", "weights GB", "batch", f"{ours} tok/s median (min-max)", "vllm.LLM tok/s median (min-max)",
              "decode bound tok/s", "rlpost / vllm.LLM", "rlpost / bound"]
    title = (f"{torch.cuda.get_device_name()}: copy_ {copy_gbs:.0f} GB/s; {args.prompt_tokens}-token prompts, "
             f"{args.new_tokens} new tokens, {'eager' if args.enforce_eager else 'CUDA graphs'}")
    table = markdown_table(header, rows)
    print(f"\n{title}\n\n{table}")
    if args.results:
        append_section(Path(args.results), "Rollout: tokens/s of the vLLM engine actor", title,
                       command_line("bench.rollout"), table)


if __name__ == "__main__":
    main()
