"""The rollout engines as a group: where they run, how a batch is split across them, and how a dead or hung
engine is replaced (issue 17, item 6).

Every share of a batch that an engine is asked for is a `Generation`, kept with its prompts and sampling
parameters until it is collected, so that it can be issued again. While the driver waits for generations
(`wait`, `collect`), an engine whose call fails because its actor died, or that finishes none of them within
`rollout.timeout_s` (hung: it is killed), is replaced:
- first the other engines' outstanding generations are waited for, so that every engine is idle: a broadcast sync
  group is rebuilt with every engine in it, and an engine still generating would join it late;
- the new actor starts with its predecessor's arguments in its predecessor's placement-group bundle (`_start`, the
  path that started the first one), so a colocated engine shares its GPU with the same learner rank as before;
- it gets the learner's current weights through the run's own sync path (`on_restart`, which `WeightSync` sets;
  without one, as in `python -m rlpost.pairs`, the weights never change and the model folder is current);
- its unfinished generations are issued to it again, with the same prompts and seeds.
A run restarts engines at most `rollout.max_restarts` times; the next failure ends it with the one-line death.

Versions (`rlpost.pipeline`): the learner holds the engines' weights except between training and the step's sync,
while `RolloutPipeline.wait` waits for the next step's batch. A generation issued again then is sampled by the
newer weights, so `wait` takes the version the learner holds (`handed_version`) and the reissued share records it
(`Generation.version`); its samples get that version, not the batch's. (The off-policy correction compares the
engine's own logprobs with the learner's, so it was exact either way; the staleness metrics and check were not.)

Not recovered: an engine that dies outside generation (in the weight sync, `sleep`, `wake_up` or `score`) ends the
run with one line naming it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import ray

from rlpost.cluster.groups import ActorDied, ActorGroup, Placement, _death, _split
from rlpost.cluster.ray_cluster import actor_env, in_bundle
from rlpost.rollout.engine import Sample, SamplingParams
from rlpost.rollout.hf_engine import HFEngine


def sizes_kv_cache_from_free_memory(rollout: dict) -> bool:
    """Whether a rollout engine's KV cache depends on what else holds GPU memory while it builds. vLLM profiles
    the free memory unless `rollout.kv_cache_gb` fixes the cache (vLLM's `kv_cache_memory_bytes`), so with it
    set, engines sharing a GPU and the learner ranks beside them build side by side: ~55 s less start-up for a
    second engine on one H200 (its build waited for the first's, bench/RESULTS.md), plus the learners' build.
    Two engines compiling at once share vLLM 0.25's compile cache safely enough: the compiled function is saved
    atomically (temporary file, then rename) and compiled again when a load fails; the graph index is read when a
    compile starts and written when it ends (~17 s later for the 0.5B model), so engines that start together
    both compile. The HF engine allocates as it goes."""
    return rollout["engine"] == "vllm" and not rollout["kv_cache_gb"]


@dataclass(eq=False)  # compared by identity: two shares may hold equal prompts
class Generation:
    """One engine's share of a submitted batch."""

    engine: int  # its index in `RolloutGroup.engines`
    prompts: list[list[int]]
    params: SamplingParams
    ref: ray.ObjectRef
    samples: list[Sample] | None = None  # the result, once fetched
    # The policy version of a share issued again to a restarted engine while the learner held newer weights than
    # the batch was submitted with (`wait`'s `handed_version`); None: the version the batch was submitted with.
    version: int | None = None


class RolloutGroup(ActorGroup):
    def __init__(self, cfg: dict, model_path: str, placement: Placement) -> None:
        rc = cfg["rollout"]
        device = cfg["cluster"]["device"]
        pg, self.pg = placement.group("rollout")
        self.colocated = placement.colocated
        if rc["engine"] == "vllm":
            from rlpost.rollout.vllm_engine import VLLMEngine

            self._actor = ray.remote(VLLMEngine)
            max_len = rc["max_model_len"] or cfg["data"]["max_prompt_tokens"] + rc["max_new_tokens"]
            self._args = [dict(model_path=model_path, dtype=cfg["model"]["dtype"],
                               tensor_parallel_size=rc["tensor_parallel_size"],
                               gpu_memory_utilization=rc["gpu_memory_utilization"], kv_cache_gb=rc["kv_cache_gb"],
                               max_model_len=max_len,
                               enforce_eager=rc["enforce_eager"],
                               sleep_level=rc["sleep_level"] if self.colocated else 0,
                               seed=cfg["trainer"]["seed"] + i, sync_timeout_s=cfg["sync"]["timeout_s"])
                          for i in range(rc["num_engines"])]
        else:
            self._actor = ray.remote(HFEngine)
            self._args = [dict(model_path=model_path, dtype=cfg["model"]["dtype"], batch_size=rc["batch_size"],
                               device=device)] * rc["num_engines"]
        # Engine i, and every engine that replaces it, runs in the same bundle (colocated: beside learner rank
        # i // rollout.engines_per_gpu).
        self._options = [dict(num_cpus=1, num_gpus=placement.gpus["rollout"],
                              scheduling_strategy=in_bundle(pg, placement.engine_bundle(i)),
                              runtime_env={"env_vars": actor_env(device)}) for i in range(rc["num_engines"])]
        self.timeout_s, self.max_restarts = float(rc["timeout_s"]), int(rc["max_restarts"])
        self.restarts = 0  # in this run so far: the rollout/restarts metric
        self.on_restart: Callable[[], None] | None = None  # hands restarted engines the current weights
        self.outstanding: list[Generation] = []  # submitted and not collected yet
        # A vLLM engine that sizes its KV cache from the memory free at its start-up needs the GPU to itself
        # while it builds: engines sharing a GPU then build one at a time (their processes start and import vLLM
        # side by side first), and colocated learner ranks build after them (`Trainer.start`).
        self.needs_quiet_gpu = sizes_kv_cache_from_free_memory(rc)
        one_by_one = self.needs_quiet_gpu and placement.engines_per_gpu > 1
        self.engines = self.actors = [self._start(i, build_later=one_by_one) for i in range(rc["num_engines"])]
        self.name_actors("rollout engine")
        for engine in self.engines if one_by_one else []:
            self.get(engine.build.remote())

    def ready(self) -> None:
        """Wait until every engine is up. The constructor only starts them, so that the other actors of a run
        start meanwhile (start-up is mostly imports and model loading, on separate processes)."""
        self.get([e.ready.remote() for e in self.engines])

    def _start(self, index: int, build_later: bool = False) -> ray.actor.ActorHandle:
        later = {"build_later": True} if build_later else {}  # a vLLM engine's keyword (the HF engine has none)
        return self._actor.options(**self._options[index]).remote(**self._args[index], **later)

    def sleep(self) -> None:
        """Colocated vLLM: free the engines' GPU memory for the learner (no-op otherwise)."""
        if self.colocated:
            self.get([e.sleep.remote() for e in self.engines])

    def wake_up(self, tags: list[str]) -> None:
        if self.colocated:
            self.get([e.wake_up.remote(tags) for e in self.engines])

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        return self.collect(self.submit(prompts, params))

    def submit(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Start generating without waiting (one share per engine); `collect` gets the samples, in prompt order."""
        generations = []
        for i, chunk in enumerate(_split(prompts, len(self.engines))):
            seed = None if params.seed is None else params.seed * 1000 + i  # engines must not sample alike
            share = SamplingParams(**{**params.__dict__, "seed": seed})
            generations.append(Generation(i, chunk, share, self.engines[i].generate.remote(chunk, share)))
        self.outstanding += generations
        return generations

    def collect(self, generations: list[Generation]) -> list[Sample]:
        self.wait(generations)
        mine = {id(g) for g in generations}
        self.outstanding = [g for g in self.outstanding if id(g) not in mine]
        return [s for g in generations for s in g.samples]

    def wait(self, generations: list[Generation], handed_version: int | None = None) -> None:
        """Block until every one of `generations` has its samples, replacing engines that die or hang meanwhile
        (the module's docstring says how). `handed_version`: the policy version a restarted engine gets now,
        when it is newer than the one the generations were submitted with (recorded on those issued again)."""
        while failed := self._settle(generations):
            failed = self._settle(self.outstanding) | failed  # every engine idle; the first reason wins
            self._replace(failed, handed_version)

    def _settle(self, generations: list[Generation]) -> dict[int, ActorDied]:
        """Wait until each of `generations` has its samples or its engine failed; returns, per failed engine, the
        line that says why. An engine is hung, and killed, when none of its generations finishes within
        `rollout.timeout_s` of the start of this wait or of its previous one finishing."""
        pending = {g.ref: g for g in generations if g.samples is None}
        start = time.monotonic()
        progress = {g.engine: start for g in pending.values()}  # each engine's last finished generation
        failed: dict[int, ActorDied] = {}
        while pending:
            timeout = None
            if self.timeout_s > 0:
                oldest = min(progress[g.engine] for g in pending.values())
                timeout = max(0.0, oldest + self.timeout_s - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            now = time.monotonic()
            for ref in ready:
                g = pending.pop(ref)
                progress[g.engine] = now
                try:
                    g.samples = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    if err.actor_init_failed:  # its constructor raised: that error's own line (train.user_error)
                        raise
                    failed.setdefault(g.engine, _death(err, self.names))
            hung = [g for g in pending.values() if timeout is not None and now - progress[g.engine] >= self.timeout_s]
            for g in hung:
                del pending[g.ref]
                if g.engine not in failed:
                    failed[g.engine] = ActorDied(f"rollout engine {g.engine} hung: no generation finished within "
                                                 f"rollout.timeout_s={self.timeout_s:g}s")
                    ray.kill(self.engines[g.engine])
        return failed

    def _replace(self, failed: dict[int, ActorDied], handed_version: int | None = None) -> None:
        """Restart the engines in `failed`, hand them the current weights and issue their unfinished generations
        again; past `rollout.max_restarts`, the failure ends the run."""
        for i, why in sorted(failed.items()):
            if self.restarts >= self.max_restarts:
                raise ActorDied(f"{why}; no restart left (rollout.max_restarts={self.max_restarts})")
            self.restarts += 1
            ray.kill(self.engines[i])  # a dead actor's process may outlive its death briefly
            self.engines[i] = self._start(i)
            print(f"[rlpost] {why}; restarting it ({self.restarts} of rollout.max_restarts={self.max_restarts})",
                  flush=True)
        self.name_actors("rollout engine")
        try:  # a replacement that hangs while starting is bounded like a generation
            self.get([self.engines[i].ready.remote() for i in failed], timeout=self.timeout_s or None)
        except ray.exceptions.GetTimeoutError:
            raise ActorDied(f"rollout engine(s) {sorted(failed)} restarted but not ready within rollout.timeout_s="
                            f"{self.timeout_s:g}s") from None
        if self.on_restart is not None:
            self.on_restart()
        for g in self.outstanding:
            if g.engine in failed and g.samples is None:
                g.ref = self.engines[g.engine].generate.remote(g.prompts, g.params)
                if handed_version is not None:
                    g.version = handed_version

    def score(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        return self.get(self.engines[0].score.remote(prompts, completions, temperature))

    def weights_digests(self) -> list[str]:
        return self.get([e.weights_digest.remote() for e in self.engines])
