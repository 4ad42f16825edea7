"""Starting or joining a Ray cluster, and placing actor groups with placement groups."""

from __future__ import annotations

import os
import socket

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlpost.config import ConfigError
from rlpost.sync.store import is_loopback

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
              "NVSHMEM_DISABLE_NVLS", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_USE_FLASHINFER_SAMPLER",
              "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
# The interface gloo and NCCL listen on, the loopback one for a local cluster's actors (unless the caller set
# them): by default they listen on the address the host name resolves to, often an external one.
LOOPBACK_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def actor_env(device: str) -> dict[str, str]:
    env = dict(ACTOR_ENV)
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for GPUs and warn
    for key in PASSED_ENV:
        if key in os.environ:
            env[key] = os.environ[key]
    if ray.is_initialized() and is_loopback(ray.util.get_node_ip_address()):  # a local cluster
        lo = loopback_interface()
        env |= {key: lo for key in LOOPBACK_ENV if key not in env}
    return env


def running_cluster_address() -> str | None:
    """The cluster `cluster.address=auto` joins, found the way `ray.init()` finds it: RAY_ADDRESS (which
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


def loopback_interface() -> str:
    """The name of this machine's loopback interface ("lo" on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addresses):
            return name
    raise RuntimeError("cluster: this machine has no loopback interface (127.0.0.0/8) to run a local cluster on")


def start_local_cluster(num_cpus: int) -> None:
    """A private Ray cluster on this machine that listens on loopback only (GCS, raylet, workers, agents); its
    actors' gloo and NCCL sockets go on the loopback interface too (`actor_env`).

    Ray binds its servers to loopback when the node's IP is 127.0.0.1, and takes that IP only while its
    multi-machine mode is off (`ray_constants.ENABLE_RAY_CLUSTER`, from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import;
    Ray 2.60 has no public option: `ray.init(_node_ip_address="127.0.0.1")` is replaced by the external address).
    The processes it starts are told the node's IP on their command lines, so the switch is needed only while
    `ray.init` runs. Token auth stays off: nothing outside this machine can reach the cluster, and a token file
    written by a local cluster breaks `ray job submit` from shells without the token."""
    from ray._private import ray_constants

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    multi_machine = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_machine
    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):  # a Ray upgrade changed the above: fail closed rather than listen outside
        ray.shutdown()
        raise RuntimeError(f"cluster: the local Ray cluster came up on {node_ip}, not loopback; rlpost's local "
                           "cluster set-up does not fit this Ray version")


def init_ray(address: str, num_cpus: int) -> None:
    """Join or start the Ray cluster `cluster.address` names:
    - "" : the cluster this process was submitted to (RAY_ADDRESS, which `ray job submit` sets), else a private
      local cluster on loopback sized `num_cpus` logical CPUs. A `ray start` head on this machine is *not*
      joined: that takes "auto" or its address;
    - "auto": RAY_ADDRESS, else the `ray start` head of this machine, and fail if there is none;
    - "local": always a private local cluster; HOST:PORT (or ray://HOST:PORT): join that head.
    Logical CPUs are a scheduling count, not cores: the debug machine time-shares phases (rollout, then
    learning), so more actors than cores is fine."""
    if ray.is_initialized():
        return
    target = {"": os.environ.get("RAY_ADDRESS") or None, "auto": running_cluster_address()}.get(address, address)
    if address == "auto" and not target:
        raise ConfigError("cluster.address=auto: no Ray cluster found (RAY_ADDRESS is unset and `ray start` has not "
                          "run on this machine); start one with `ray start --head` or set cluster.address=''")
    if target and target != "local":
        check_reachable(target)
        ray.init(address=target, log_to_driver=True)
        return
    start_local_cluster(num_cpus)


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
