"""Actor groups: the learner ranks and the reward workers, each in its placement group, and the weight-sync
wiring between learners and engines (the rollout engines' group is `rlpost.cluster.engines`). These two modules
are the only ones that know the topology; the trainer sees groups with plain methods."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group

from rlpost.cluster.ray_cluster import actor_env, create_placement_group, in_bundle, require_gpus
from rlpost.config import ConfigError, RewardConfig, RewardModelConfig, RunError
from rlpost.experience import MiniBatch
from rlpost.learner.actor import LearnerRank
from rlpost.learner.critic import CriticRank
from rlpost.learner.reward_model import RewardModelRank
from rlpost.rewards.manager import RewardManager, RewardResult, component_labels
from rlpost.rewards.reward_model import RewardModelScorer, RunningMeanStd
from rlpost.sync.transport import SyncGroupInfo, broadcast_layout

if TYPE_CHECKING:  # engines.py builds on this module
    from rlpost.cluster.engines import RolloutGroup


def _split(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (keeps each prompt's group together when sizes allow)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class ActorDied(RunError):
    """An actor of a group died (its process was killed, crashed, or its node went away): one line naming it and
    its node. The trainer adds the last checkpoint's path (`Trainer.fit`)."""


def _death(err: ray.exceptions.RayActorError, names: dict[str, str]) -> ActorDied:
    text = " ".join(str(err).split())
    name = names.get(err.actor_id or "", "an actor")
    node = re.search(r"\bip: (\S+)", text)
    # Ray's message is a paragraph (fields, the exit type and detail, common causes): its exit type is the gist.
    exit_type = re.search(r"Worker exit type: (\w+)", text)
    why = f"exit type {exit_type.group(1)}" if exit_type else text.split(". ")[0][:200]
    return ActorDied(f"{name} (node {node.group(1) if node else 'unknown'}) died ({why}: killed, out of memory or "
                     "crashed; its last lines are in the log above)")


def get(refs, names: dict[str, str], timeout: float | None = None):
    """`ray.get`, with a dead actor among `names` (actor id -> a name like "learner rank 1") turned into one line.

    A dead rank often shows up first as its peers' error (a collective that lost a member raises in rank 0), so
    on a task error the other calls get a short grace to report the death that caused it."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayActorError as err:
        if err.actor_init_failed:  # its __init__ raised: that error's own line is the message (train.user_error)
            raise
        raise _death(err, names) from None
    except ray.exceptions.RayTaskError:
        listed = refs if isinstance(refs, list) else [refs]
        ready, _ = ray.wait(listed, num_returns=len(listed), timeout=10)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                raise _death(err, names) from None
            except Exception:  # another peer's error, not a death: the original error is raised below
                pass
        raise


class ActorGroup:
    """Actors placed in one placement group; `shutdown` kills them and frees the group's resources."""

    actors: list
    pg = None
    names: dict[str, str] = {}  # noqa: RUF012 - replaced, never mutated

    def name_actors(self, prefix: str) -> None:
        """Record "<prefix> <i>" for each actor, for the one-line error when one dies."""
        self.names = {a._actor_id.hex(): f"{prefix} {i}" for i, a in enumerate(self.actors)}

    def get(self, refs, timeout: float | None = None):
        return get(refs, self.names, timeout)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.pg is not None:
            remove_placement_group(self.pg)


def colocated_members(groups: int, gpu_reward_model_actors: int, gpus: int, engines_per_gpu: int = 1) -> int:
    """Actors per GPU bundle of a colocated cluster: one per rank group (learner, critic), the engines
    (`rollout.engines_per_gpu`), and an even share of the GPU reward-model actors (spread round-robin over the
    bundles). Each gets 1/members of the GPU in Ray's books."""
    return groups + engines_per_gpu + -(-gpu_reward_model_actors // gpus)


class Placement:
    """Where each group's actors go. CPU: one bundle per actor. GPU, split: one GPU per learner (and critic) rank,
    `tensor_parallel_size` GPUs per engine, each group in its own placement group; a reward model gets
    `num_gpus` per actor in a group of its own. GPU, colocated: one bundle per GPU holding a learner rank, its
    `rollout.engines_per_gpu` engines (and a critic rank), sharing the GPU in Ray's books (sleeping engines take
    turns with the learner for real; awake ones leave it a fixed share), and the GPU reward-model actors join
    these bundles: on one GPU there is no other
    place, and a 0.5B scorer needs ~2 GB beside vLLM's share and the learner."""

    def __init__(self, cfg: dict) -> None:
        self.device, self.colocated = cfg["cluster"]["device"], cfg["cluster"]["colocate"]
        rc = cfg["rollout"]
        self.engines_per_gpu = rc.get("engines_per_gpu", 1) if self.colocated else 1
        ranks = {"learner": cfg["learner"]["num_ranks"]}
        if cfg["critic"]["enabled"]:
            ranks["critic"] = cfg["critic"]["num_ranks"]
        self.shared = None
        if self.device == "cpu":
            self.bundles = {name: [{"CPU": 1}] * n for name, n in ranks.items()}
            self.bundles["rollout"] = [{"CPU": 1}] * rc["num_engines"]
            self.gpus = dict.fromkeys([*ranks, "rollout"], 0.0)
        elif self.colocated:
            # One bundle per learner GPU; with no learner ranks (`rlpost.pairs`: engines only), one per
            # `engines_per_gpu` engines, so the engines share their GPUs as the run's layout says.
            gpus = ranks["learner"] or -(-rc["num_engines"] // self.engines_per_gpu)
            require_gpus(gpus, cfg["cluster"]["name"])
            scorers = sum(m["num_actors"] for m in cfg["reward"]["models"] if m["num_gpus"] > 0)
            groups = sum(1 for n in ranks.values() if n)  # rank groups with a rank on every GPU
            members = colocated_members(groups, scorers, gpus, self.engines_per_gpu)
            self.shared = create_placement_group("gpus", [{"GPU": 1, "CPU": members}] * gpus)
            self.gpus = dict.fromkeys([*ranks, "rollout", "reward_model"], 1.0 / members)
        else:
            tp = rc["tensor_parallel_size"]
            require_gpus(sum(ranks.values()) + rc["num_engines"] * tp, cfg["cluster"]["name"])
            self.bundles = {name: [{"GPU": 1, "CPU": 1}] * n for name, n in ranks.items()}
            self.bundles["rollout"] = [{"GPU": tp, "CPU": 1}] * rc["num_engines"]
            self.gpus = {**dict.fromkeys(ranks, 1.0), "rollout": float(tp)}

    def engine_bundle(self, engine: int) -> int:
        """The bundle of engine `engine`: its own, or (colocated) its learner GPU's."""
        return engine // self.engines_per_gpu

    def reward_model_bundle(self, actor: int) -> int:
        """Colocated: the shared bundle of the `actor`-th GPU reward-model actor (round-robin over the GPUs, the
        spread `colocated_members` counts)."""
        return actor % len(self.shared.bundle_specs)

    def group(self, name: str) -> tuple[PlacementGroup, PlacementGroup | None]:
        """The placement group for `name`'s actors, and the one the group owns (None when shared)."""
        if self.shared is not None:
            return self.shared, None
        pg = create_placement_group(name, self.bundles[name])
        return pg, pg

    def shutdown(self) -> None:
        if self.shared is not None:
            remove_placement_group(self.shared)


class LearnerGroup(ActorGroup):
    """The policy's DeepSpeed ranks (`learner.num_ranks` of them)."""

    rank_class: type = LearnerRank
    section = "learner"  # the config section with num_ranks; also the placement group's name

    def __init__(self, cfg: dict, model_path: str, total_optimizer_steps: int, placement: Placement) -> None:
        n = cfg[self.section]["num_ranks"]
        device = cfg["cluster"]["device"]
        pg, self.pg = placement.group(self.section)
        actor = ray.remote(self.rank_class)
        options = [dict(num_cpus=1, num_gpus=placement.gpus[self.section], scheduling_strategy=in_bundle(pg, i),
                        runtime_env={"env_vars": actor_env(device)}) for i in range(n)]
        self.ranks = self.actors = [actor.options(**options[i]).remote(cfg, i, n, model_path, total_optimizer_steps)
                                    for i in range(n)]
        self.name_actors(f"{self.section} rank")

    def setup(self) -> None:
        self.get(self.begin_setup())

    def begin_setup(self) -> list[ray.ObjectRef]:
        """Start building the ranks' models and optimizers (the training group's rendezvous first); `get` the
        returned calls to wait. The constructor only starts the ranks' processes, which import meanwhile, so that
        a caller can let other actors take the GPU first (colocated vLLM engines profile its memory at their
        start-up) without waiting for the imports after."""
        addr, port = self.get(self.ranks[0].address.remote())
        return [r.setup.remote(addr, port) for r in self.ranks]

    def experience(self, prompts: list[list[int]], completions: list[list[int]], old: bool = False
                   ) -> dict[str, list[list[float]]]:
        """The experience phase's per-token numbers for every sequence, in order: the ranks split the batch."""
        n = len(self.ranks)
        results = self.get([r.experience.remote(p, c, old) for r, p, c
                           in zip(self.ranks, _split(prompts, n), _split(completions, n), strict=True)])
        return {k: [row for res in results for row in res[k]] for k in results[0]}

    def train_step(self, per_rank: list[list[MiniBatch]], kl_coef: float = 0.0) -> dict[str, float]:
        results = self.get([r.train_step.remote(mbs, kl_coef) for r, mbs in zip(self.ranks, per_rank, strict=True)])
        merged = {k: sum(res[k] for res in results) / len(results) for k in results[0]}
        for k in merged:  # totals, the slowest rank's time, maxima and the fullest rank's memory, not averages
            if k.endswith("/tokens"):
                merged[k] = sum(res[k] for res in results)
            elif k.endswith("/seconds") or k.endswith("_max") or "/memory_" in k:
                merged[k] = max(res[k] for res in results)
        return merged

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        return self.get([r.score.remote(prompts, completions) for r in self.ranks])[0]

    def weights_digest(self) -> str:
        return self.get([r.weights_digest.remote() for r in self.ranks])[0]

    # Checkpointing (rlpost.checkpoint): every rank takes part, each writes its own share into `path`.
    def save_checkpoint(self, path: str) -> None:
        self.get([r.save_checkpoint.remote(path) for r in self.ranks])

    def load_checkpoint(self, path: str) -> None:
        self.get([r.load_checkpoint.remote(path) for r in self.ranks])

    def export_hf(self, path: str) -> None:
        self.get([r.export_hf.remote(path) for r in self.ranks])


class CriticGroup(LearnerGroup):
    """PPO's value function: `critic.num_ranks` DeepSpeed ranks; `experience` gives {"values": ...}."""

    rank_class = CriticRank
    section = "critic"


class RewardModelLearnerGroup(LearnerGroup):
    """Reward-model training: `learner.num_ranks` DeepSpeed ranks of a one-output head (`algo.objective=rm`);
    `score` gives one number per sequence."""

    rank_class = RewardModelRank


def _exit_at_once(signum: int, frame: object) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class RewardWorker:
    """A Ray actor owning a RewardManager (and so a pool of verifier processes)."""

    def __init__(self, cfg: RewardConfig) -> None:
        # Ray's worker turns SIGTERM (what its teardown sends) into SystemExit wherever the main thread is; raised
        # inside the verifier pool's pipe finalizer (`Connection.__del__`) it printed a traceback into the driver's
        # log on a clean stop (CI, session 12). This actor has nothing to save: it exits at once, and its pool's
        # processes exit when their pipes close.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_at_once)
        self.manager = RewardManager(cfg)

    def labels(self) -> list[str]:
        return self.manager.labels

    def dry_run(self, prompts: list[str], columns: list[dict]) -> str | None:
        """`RewardManager.dry_run` on this actor's workers: its one-line error, or None. (Returned, not raised:
        the driver raises it as the ConfigError it is, not wrapped in a RayTaskError.)"""
        try:
            self.manager.dry_run(prompts, columns)
        except ConfigError as err:
            return str(err)
        return None

    def score(self, prompts: list[str], completions: list[str], columns: list[dict]) -> RewardResult:
        return self.manager.score(prompts, completions, columns)


class RewardModelGroup(ActorGroup):
    """The actors serving one `reward.models` entry, in a placement group of their own (with `num_gpus` each on
    a GPU cluster); the running statistics for its normalisation live here, shared by its actors."""

    def __init__(self, spec: RewardModelConfig, label: str, device: str, placement: Placement,
                 first: int = 0) -> None:
        """`first`: the number of GPU reward-model actors placed before this group's (colocated: they take the
        shared bundles round-robin)."""
        gpus = float(spec.num_gpus) if device != "cpu" else 0.0
        if gpus and placement.shared is not None:  # colocated: in the learners' GPU bundles
            pg, gpus = placement.shared, placement.gpus["reward_model"]
            bundles = [placement.reward_model_bundle(first + i) for i in range(spec.num_actors)]
        else:
            bundle = {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1}
            pg = self.pg = create_placement_group(f"reward_model_{label}", [bundle] * spec.num_actors)
            bundles = list(range(spec.num_actors))
        actor = ray.remote(RewardModelScorer)
        self.actors = [actor.options(num_cpus=1, num_gpus=gpus, scheduling_strategy=in_bundle(pg, b),
                                     runtime_env={"env_vars": actor_env(device)})
                       .remote(spec.path, spec.dtype, spec.batch_tokens, "cuda" if gpus else "cpu")
                       for b in bundles]
        self.name_actors(f"reward model {label} actor")
        self.get([a.ready.remote() for a in self.actors])
        self.label, self.weight = label, float(spec.weight)
        self.stats = RunningMeanStd() if spec.normalize else None

    def submit(self, messages: list[list[dict]], completions: list[str]) -> list[ray.ObjectRef]:
        n = len(self.actors)
        return [a.score.remote(m, c) for a, m, c in zip(self.actors, _split(messages, n), _split(completions, n),
                                                        strict=True)]

    def collect(self, refs: list[ray.ObjectRef], update_stats: bool = True
                ) -> tuple[list[float], dict[str, list[float]]]:
        """(the component's values, its extra metrics): normalised scores and the raw ones when normalising.
        `update_stats=False` (evaluation) normalises with the statistics of training's scores alone."""
        raw = [x for part in self.get(refs) for x in part]
        if self.stats is None:
            return raw, {}
        if update_stats:
            self.stats.update(raw)
        return self.stats.normalize(raw), {"raw": raw}


class RewardGroup(ActorGroup):
    """Reward functions (verifier workers) and reward models (`RewardModelGroup`s), scored together."""

    def __init__(self, reward_cfg: RewardConfig, device: str, placement: Placement) -> None:
        n = reward_cfg.num_actors if reward_cfg.functions else 0
        self.actors = self.workers = []
        if n:
            self.pg = create_placement_group("reward", [{"CPU": 1}] * n)
            actor = ray.remote(RewardWorker)
            self.workers = self.actors = [actor.options(num_cpus=1, scheduling_strategy=in_bundle(self.pg, i),
                                          runtime_env={"env_vars": actor_env(device)}).remote(reward_cfg)
                            for i in range(n)]
        self.name_actors("reward actor")
        self.num_fns = len(reward_cfg.functions)
        self.labels = component_labels(reward_cfg)
        # Reward models are up when this returns (a GPU one holds its memory before any vLLM engine sizes its
        # cache); the function workers only start: `ready` waits for them.
        self.models, placed = [], 0
        for spec, label in zip(reward_cfg.models, self.labels[self.num_fns:], strict=True):
            self.models.append(RewardModelGroup(spec, label, device, placement, placed))
            placed += spec.num_actors if spec.num_gpus > 0 else 0

    def ready(self, first_batch: tuple[list[str], list[dict]] | None = None) -> None:
        """Wait until every reward function worker is up; with `first_batch` (prompts, their dataset columns),
        also make the dry call of every function on it (`RewardManager.dry_run`) on the first actor's workers,
        which loaded the functions anyway: a ConfigError naming the function if one fails. Drivers call this
        right after starting their actors, so a broken function stops the run while the models still load."""
        for labels in self.get([w.labels.remote() for w in self.workers]):
            assert labels == self.labels[:self.num_fns], (labels, self.labels)
        if first_batch is not None and self.workers:
            error = self.get(self.workers[0].dry_run.remote(*first_batch))
            if error is not None:
                raise ConfigError(error)

    def score(self, prompts: list[str], completions: list[str], columns: list[dict],
              messages: list[list[dict]] | None = None, update_stats: bool = True) -> RewardResult:
        """Every component of every item; `messages` (the prompts as chat messages) are for the reward models,
        whose running normalisation statistics only training's batches update (`update_stats`)."""
        model_refs = [m.submit(messages, completions) for m in self.models]  # they run alongside the functions
        if self.workers:
            parts = [_split(x, len(self.workers)) for x in (prompts, completions, columns)]
            result = RewardResult.concat(self.get([w.score.remote(p, c, col)
                                                  for w, p, c, col in zip(self.workers, *parts, strict=True)]))
        else:
            result = RewardResult(total=[0.0] * len(prompts), components={}, errors=0, timeouts=0)
        for model, refs in zip(self.models, model_refs, strict=True):
            result.add_component(model.label, model.weight, *model.collect(refs, update_stats))
        return result

    def shutdown(self) -> None:
        super().shutdown()
        for model in self.models:
            model.shutdown()


class WeightSync:
    """Learner -> every rollout engine, over a dedicated group of the chosen transport (see `rlpost.sync`).

    Broadcast transports (gloo, nccl): learner rank 0 is rank 0 of the group; engine i's workers are ranks
    1 + i * tp ... . IPC: each learner rank serves the engine workers on its own GPU, matched by GPU UUID.
    Every call here is bounded by `sync.timeout_s`: a peer that dies or hangs raises one line, never blocks.
    """

    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup, transport: str, bucket_mb: float,
                 timeout_s: float, tensor_parallel_size: int = 1) -> None:
        self.learners, self.rollout, self.transport, self.timeout_s = learners, rollout, transport, timeout_s
        self.tensor_parallel_size = tensor_parallel_size
        self.plan = ray.get([r.sync_plan.remote(bucket_mb) for r in learners.ranks])[0]
        self.num_buckets = len(self.plan)
        self._connect()
        rollout.on_restart = self.reconnect

    def _connect(self) -> None:
        """Every learner rank and engine joins a new sync group (a second call replaces the first everywhere)."""
        engines = self.rollout.engines
        if self.transport == "ipc":
            info = self._ipc_info(self.plan)
            first_ranks = [1] * len(engines)  # any rank > 0 receives; IPC matches peers by GPU, not rank
        else:
            host, port = ray.get(self.learners.ranks[0].address.remote())
            world_size, first_ranks = broadcast_layout(len(engines), self.tensor_parallel_size)
            info = SyncGroupInfo(self.transport, host, port, world_size, self.timeout_s)
        # Every member joins at once: group construction blocks until all of them are there.
        self._get([r.init_weight_sync.remote(info) for r in self.learners.ranks]
                  + [e.init_weight_sync.remote(info, k, self.plan) for e, k in zip(engines, first_ranks, strict=True)],
                  "setting up the sync group")

    def reconnect(self) -> None:
        """A restarted engine joins: the group it replaces a member of is rebuilt (a broadcast group's members are
        fixed at its creation; an IPC sender counts its receivers), then every engine gets the current weights."""
        self._connect()
        self.sync()

    def _ipc_info(self, plan: list) -> SyncGroupInfo:
        learner_uuids = ray.get([r.gpu_uuid.remote() for r in self.learners.ranks])
        worker_uuids = [u for uuids in ray.get([e.gpu_uuids.remote() for e in self.rollout.engines]) for u in uuids]
        stray = sorted(set(worker_uuids) - set(learner_uuids))
        if stray:
            raise ConfigError(f"sync.transport=ipc: engine GPUs {stray} host no learner rank; colocate them (cluster."
                              "colocate=true, rollout.num_engines=learner.num_ranks) or use sync.transport=nccl")
        addresses = ray.get([r.address.remote() for r in self.learners.ranks])
        senders = {uuid: (host, port, worker_uuids.count(uuid))
                   for uuid, (host, port) in zip(learner_uuids, addresses, strict=True) if uuid in worker_uuids}
        return SyncGroupInfo("ipc", "", 0, 0, self.timeout_s, ipc_senders=senders,
                             slot_bytes=max(b.nbytes for b in plan))

    def _get(self, refs: list, what: str) -> list:
        try:
            return get(refs, self.learners.names | self.rollout.names, timeout=self.timeout_s + 30)
        except ray.exceptions.GetTimeoutError:
            raise RunError(f"sync: {what} did not finish within sync.timeout_s={self.timeout_s:.0f}s "
                               f"(transport {self.transport}); a learner rank or engine died or hangs, see the "
                               "log above; raise sync.timeout_s if the model is very large") from None

    def sync(self) -> dict[str, float]:
        """Colocated engines wake their weights first, take the new ones, then re-allocate the KV cache."""
        self.rollout.wake_up(["weights"])
        results = self._get([r.send_weights.remote() for r in self.learners.ranks]
                            + [e.receive_weights.remote() for e in self.rollout.engines], "weight sync")
        self.rollout.wake_up(["kv_cache"])
        return results[0]
