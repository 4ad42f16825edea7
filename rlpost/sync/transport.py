"""The weight-transport interface: how flat buckets travel from the learner to the rollout engines.

One sender (learner rank 0) and N receivers (rollout engine workers) form a *sync group* that is separate from
the learners' training group, so weight sync can never deadlock or interleave with training collectives.
Transports move flat, single-dtype buffers only; packing and unpacking live in `buckets.py` and the send/receive
loops in `weights.py`, so a new transport (nccl, ipc) implements just these three methods.

Implementations: `gloo` (CPU, this module's sibling). `nccl` and `ipc` are the GPU transports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from rlpost.sync.buckets import Bucket


@dataclass(frozen=True)
class SyncGroupInfo:
    """Where the sync group meets. Rank 0 is the sender; receivers are ranks 1..world_size-1."""

    transport: str
    host: str
    port: int
    world_size: int
    timeout_s: float


class WeightTransport(ABC):
    name: str = ""

    @abstractmethod
    def send(self, flat: torch.Tensor) -> None:
        """Sender: deliver one bucket's flat buffer to every receiver (blocks until it is out)."""

    @abstractmethod
    def receive(self, bucket: Bucket) -> torch.Tensor:
        """Receiver: return the next bucket's flat buffer (numel and dtype from the plan)."""

    @abstractmethod
    def close(self) -> None:
        """Release the group. Safe to call twice."""


def choose_transport(requested: str, device: str, colocated: bool) -> str:
    """`sync.transport=auto` resolved from placement: gloo on CPU; on GPUs, CUDA IPC when learner and engines share
    the GPUs (NCCL refuses two ranks on one GPU), NCCL broadcast when they sit on different GPUs."""
    if requested != "auto":
        return requested
    if device == "cpu":
        return "gloo"
    return "ipc" if colocated else "nccl"


def create_transport(info: SyncGroupInfo, rank: int) -> WeightTransport:
    """The one place that maps a transport name to its implementation."""
    if info.transport == "gloo":
        from rlpost.sync.gloo import GlooTransport

        return GlooTransport(info, rank)
    raise ValueError(f"sync.transport={info.transport!r} is not available; choose gloo")
