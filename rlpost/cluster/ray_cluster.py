"""Starting or joining a Ray cluster, and placing actor groups with placement groups."""

from __future__ import annotations

import os
import socket

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
# Settings rlpost and its libraries read from the environment, passed on as the caller has them: by the driver to
# every actor, and by `rlpost-submit` to the job's driver. An actor on a node that `ray start` started in another
# shell would not inherit them. The NVLink-multicast switches are safety settings of shared multi-GPU hosts
# (multicast can take a host's GPUs out of service).
PASSED_ENV = ("WANDB_MODE", "WANDB_PROJECT", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
              "HF_DATASETS_OFFLINE", "RLPOST_CACHE", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
              "NVSHMEM_DISABLE_NVLS", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_USE_FLASHINFER_SAMPLER")


def actor_env(device: str) -> dict[str, str]:
    env = dict(ACTOR_ENV)
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for GPUs and warn
    for key in PASSED_ENV:
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def running_cluster_address() -> str | None:
    """The cluster this process should join, found the way `ray.init()` finds it: RAY_ADDRESS (which
    `ray job submit` sets for the job's driver), else the head that `ray start` last started on this machine."""
    from ray._private.services import get_ray_address_from_environment

    return get_ray_address_from_environment(None, None)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One line if nothing answers at a GCS address: `ray.init` would otherwise retry for minutes."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if address.startswith(("http://", "https://")) or not host or not port.isdigit():
        raise ConfigError(f"cluster.address={address!r} is not a Ray cluster address; use HOST:PORT of the head's "
                          "GCS (`ray start --head --port PORT`), 'auto', 'local', or '' (the dashboard's "
                          "http:// address is for `rlpost-submit`)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(f"cluster.address={address!r}: no Ray cluster answers there ({err.strerror or err}); start "
                          "one with `ray start --head` (see launch/README.md), fix the address, or set "
                          "cluster.address=local for a local cluster") from None


def init_ray(address: str, num_cpus: int) -> None:
    """Join or start the Ray cluster `cluster.address` names:
    - "" : join the cluster this process belongs to (a `ray job submit` job, or a `ray start` head on this
      machine), else start a local one sized `num_cpus` logical CPUs;
    - "auto": join that cluster, and fail if there is none; "local": always start a local one;
    - HOST:PORT (or ray://HOST:PORT): join that head.
    Logical CPUs are a scheduling count, not cores: the debug machine time-shares phases (rollout, then
    learning), so more actors than cores is fine."""
    if ray.is_initialized():
        return
    target = address if address not in ("", "auto") else running_cluster_address()
    if address == "auto" and not target:
        raise ConfigError("cluster.address=auto: no Ray cluster found (RAY_ADDRESS is unset and `ray start` has not "
                          "run on this machine); start one with `ray start --head` or set cluster.address=''")
    if target and target != "local":
        check_reachable(target)
        ray.init(address=target, log_to_driver=True)
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
