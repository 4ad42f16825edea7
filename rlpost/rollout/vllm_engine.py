"""The GPU rollout engine: a vLLM (V1) `LLM` inside a Ray actor, behind the same interface as the HF engine.

- Logprobs: `logprobs_mode="processed_logprobs"` returns log_softmax(logits / T) at the sampled token, the quantity
  the learner recomputes (see `engine.py`); with top-p/top-k on it is taken after truncation, where the HF engine
  takes it before: keep them off (the default) when the logprob check matters.
- Seeds: one seed per request, derived from `params.seed` and the request's index, so the copies of a prompt in
  a GRPO group differ while a re-run with the same seed repeats exactly.
- Weights arrive through the worker extension in `vllm_worker.py`. Colocated with the learner (IPC), the engine
  sleeps while the learner trains (level 2 frees weights and KV cache; the sync rewrites every weight anyway) and
  wakes in two phases: weights, sync, then KV cache, so the two never need the memory at the same time.
- After every sync the prefix cache is reset: cached KV entries were computed with the old weights.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict
from typing import Any

from rlpost.config import ConfigError, RunError
from rlpost.rollout.engine import RolloutEngine, Sample, SamplingParams
from rlpost.rollout.vllm_worker import plan_to_wire
from rlpost.sync.buckets import Bucket
from rlpost.sync.transport import SyncGroupInfo

TESTED_VLLM = "0.25."


def check_vllm() -> str:
    """The installed vLLM version, or one line saying what to install. rlpost uses vLLM internals (worker
    extension, sleep tags, logprobs modes) that changed across releases, so only tested versions start, unless
    RLPOST_ALLOW_UNTESTED_VLLM=1."""
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("rollout.engine=vllm: vLLM is not installed; pip install 'rlpost[vllm]' (tested with "
                          f"vllm {TESTED_VLLM}x), or use rollout.engine=hf") from None
    if not version.startswith(TESTED_VLLM) and os.environ.get("RLPOST_ALLOW_UNTESTED_VLLM") != "1":
        raise ConfigError(f"rollout.engine=vllm: vLLM {version} is installed but rlpost is tested with "
                          f"{TESTED_VLLM}x; pip install 'vllm=={TESTED_VLLM}0' (or set RLPOST_ALLOW_UNTESTED_VLLM=1)")
    return version


def engine_args(model_path: str, dtype: str, tensor_parallel_size: int, gpu_memory_utilization: float,
                kv_cache_gb: float, max_model_len: int | None, enforce_eager: bool, sleep_level: int, seed: int
                ) -> dict[str, Any]:
    """`vllm.LLM`'s arguments for a rollout engine: one process per engine unless tensor-parallel, sleep mode when
    it shares its GPU with a learner (`sleep_level` > 0), prefix caching (a group's completions share their
    prompt), the logprobs of the sampled tokens after temperature (what the learner computes), and the worker
    extension that receives weights. With `kv_cache_gb` > 0 vLLM sizes the KV cache from it instead of from
    `gpu_memory_utilization`."""
    args = dict(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                distributed_executor_backend="uni" if tensor_parallel_size == 1 else "mp",
                gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                enforce_eager=enforce_eager, enable_sleep_mode=sleep_level > 0, seed=seed,
                enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                worker_extension_cls="rlpost.rollout.vllm_worker.WeightSyncExtension")
    if kv_cache_gb > 0:
        args["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    return args


class VLLMEngine(RolloutEngine):
    def __init__(self, model_path: str, dtype: str = "bfloat16", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, kv_cache_gb: float = 0.0, max_model_len: int | None = None,
                 enforce_eager: bool = False, sleep_level: int = 0, seed: int = 0, sync_timeout_s: float = 600.0,
                 build_later: bool = False) -> None:
        """`build_later`: import vLLM now but build the engine in `build` (engines sharing a GPU build one at a
        time, since each profiles the GPU's memory while it starts, but their processes start and import side by
        side)."""
        self.version = check_vllm()
        import torch
        import vllm  # noqa: F401 - most of the process's start-up, also when the build waits

        if torch.cuda.is_initialized():  # a forked engine-core process could not use CUDA any more
            os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"

        self.sleep_level = sleep_level
        self.sync_timeout_s = sync_timeout_s
        self.asleep = False
        self._engine_args = engine_args(model_path, dtype, tensor_parallel_size, gpu_memory_utilization, kv_cache_gb,
                                        max_model_len, enforce_eager, sleep_level, seed)
        if not build_later:
            self.build()

    def build(self) -> None:
        from vllm import LLM

        try:
            self.llm = LLM(**self._engine_args)
        except Exception as e:  # vLLM explains memory problems in the message's first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunError(f"rollout: vLLM could not start ({type(e).__name__}: {first}); if the model does not "
                               "fit, raise rollout.gpu_memory_utilization, lower rollout.max_model_len or raise "
                               "rollout.tensor_parallel_size") from e

    def ready(self) -> str:
        return self.version

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm import TokensPrompt

        base = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                    max_tokens=params.max_new_tokens, ignore_eos=params.ignore_eos, logprobs=0)
        # One seed per request: copies of a prompt in one group must not sample alike.
        per_request = [VllmSamplingParams(**base, seed=None if params.seed is None else params.seed * 100_003 + i)
                       for i in range(len(prompts))]
        outputs = self._call(self.llm.generate, [TokensPrompt(prompt_token_ids=p) for p in prompts], per_request,
                             use_tqdm=False)
        samples = []
        for prompt, out in zip(prompts, outputs, strict=True):
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [completion.logprobs[t][tok].logprob for t, tok in enumerate(ids)]
            samples.append(Sample(prompt_ids=list(prompt), completion_ids=ids, logprobs=logprobs,
                                  finish_reason="length" if completion.finish_reason == "length" else "stop"))
        return samples

    def score(self, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0
              ) -> list[list[float]]:
        """Teacher-forced logprobs via vLLM's prompt logprobs (computed from raw logits, so at T = 1 only)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm import TokensPrompt

        if temperature != 1.0:
            raise ValueError("VLLMEngine.score supports temperature 1.0 only (vLLM's prompt logprobs are raw)")
        params = VllmSamplingParams(max_tokens=1, prompt_logprobs=0)
        outputs = self._call(self.llm.generate, [TokensPrompt(prompt_token_ids=p + c)
                                                 for p, c in zip(prompts, completions, strict=True)],
                             params, use_tqdm=False)
        result = []
        for prompt, completion, out in zip(prompts, completions, outputs, strict=True):
            lps = out.prompt_logprobs
            result.append([lps[len(prompt) + t][tok].logprob for t, tok in enumerate(completion)])
        return result

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if type(e).__name__ == "EngineDeadError":
                raise RunError("rollout: a vLLM worker died mid-generation (see its log above: often GPU "
                                   "out of memory); lower rollout.gpu_memory_utilization or rollout.batch_size") from e
            raise

    # ---- memory sharing with a colocated learner --------------------------------------------------------
    def sleep(self) -> None:
        if self.sleep_level > 0 and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake_up(self, tags: list[str]) -> None:
        if not self.asleep:
            return
        try:
            self.llm.wake_up(tags=tags)
        except Exception as e:  # vLLM's allocator: "CUDA Error: out of memory at .../cumem_allocator.cpp"
            if "out of memory" not in str(e):
                raise
            raise RunError(
                f"rollout: a colocated engine could not take its {' and '.join(tags)} back: the GPU is out of "
                f"memory; each engine takes rollout.gpu_memory_utilization="
                f"{self._engine_args['gpu_memory_utilization']:g} of it and "
                "the learner ranks keep their actor/memory_held_gb and critic/memory_held_gb between steps: set "
                "rollout.kv_cache_gb to what a batch needs, or lower rollout.gpu_memory_utilization or "
                "learner.micro_batch_size") from e
        self.asleep = "kv_cache" not in tags

    # ---- weight sync ------------------------------------------------------------------------------------
    def gpu_uuids(self) -> list[str]:
        return self.llm.collective_rpc("rlpost_gpu_uuid")

    def init_weight_sync(self, info: SyncGroupInfo, rank: int, plan: list[Bucket]) -> None:
        self.llm.collective_rpc("rlpost_init_sync", args=(asdict(info), rank, plan_to_wire(plan)),
                                timeout=info.timeout_s)

    def receive_weights(self) -> int:
        counts = self.llm.collective_rpc("rlpost_receive", timeout=self.sync_timeout_s)
        if not self.asleep:  # sleeping (level >= 1) already dropped the prefix cache
            self.llm.reset_prefix_cache()
        return counts[0]

    def weights_digest(self) -> str:
        """vLLM's own (fused) parameters: comparable across engines and syncs, not with the learner's names."""
        return self.llm.collective_rpc("rlpost_weights_digest")[0]
