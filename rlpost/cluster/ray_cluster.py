"""Starting or joining a Ray cluster, and placing actor groups with placement groups."""

from __future__ import annotations

import os

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlpost.config import ConfigError

# Threads per process: on small machines, every actor spinning up one OpenMP thread per core made generation up to
# 40x slower (measured on 2 cores). Each actor is one process with one compute thread; scale out with actors.
# HF_HUB_DISABLE_PROGRESS_BARS also silences transformers' per-actor "Loading weights" bars, which Ray would
# interleave into the driver's log.
ACTOR_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def actor_env(device: str) -> dict[str, str]:
    env = dict(ACTOR_ENV)
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for GPUs and warn
    for key in ("WANDB_MODE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "RLPOST_CACHE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def init_ray(address: str, num_cpus: int) -> None:
    """Join the cluster at `address`, or the one this process was submitted to (`ray job submit` sets
    RAY_ADDRESS), or start a local one sized `num_cpus` logical CPUs. Logical CPUs are a scheduling count, not
    cores: the debug machine time-shares phases (rollout, then learning), so more actors than cores is fine."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A local cluster writes ~/.ray/auth_token when auth is on, after which `ray job submit` from a shell with a
    # different setting fails; debug clusters are loopback-only, so run them without token auth.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def create_placement_group(name: str, bundles: list[dict[str, float]], timeout_s: float = 120.0) -> PlacementGroup:
    pg = placement_group(bundles, strategy="PACK", name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise ConfigError(f"cluster: the {name} group needs {bundles} but the cluster has "
                          f"{ray.available_resources()} free after {timeout_s:.0f}s; lower the group's size "
                          "(learner.num_ranks / rollout.num_engines / reward.num_actors) or add nodes")
    return pg


def require_gpus(needed: int, cluster_name: str) -> None:
    """Fail at once, in one line, when the cluster cannot ever place the GPU groups (rather than after the
    placement-group timeout)."""
    have = int(ray.cluster_resources().get("GPU", 0))
    if have < needed:
        raise ConfigError(f"cluster={cluster_name} needs {needed} GPU(s) but the Ray cluster has {have}; use "
                          "cluster=debug_cpu on a machine without GPUs, or lower learner.num_ranks / "
                          "rollout.num_engines / rollout.tensor_parallel_size")


def in_bundle(pg: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)
