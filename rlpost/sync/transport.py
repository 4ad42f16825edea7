"""The weight-transport interface: how flat buckets travel from the learner to the rollout engines.

Senders (learner ranks) and receivers (rollout engine workers) form a *sync group* that is separate from the
learners' training group, so weight sync can never deadlock or interleave with training collectives.
Transports move flat, single-dtype buffers only; packing and unpacking live in `buckets.py` and the send/receive
loops in `weights.py`, so a transport implements just the methods below.

Implementations, chosen from placement (`choose_transport`):
- `gloo` (CPU) and `nccl` (learner and engines on different GPUs): one broadcast per bucket from learner rank 0
  to every engine worker, in `broadcast.py`. They are twins that differ only in the process-group class, so the
  CPU tests of the gloo transport exercise the NCCL protocol too.
- `ipc` (learner and engines share GPUs): CUDA IPC handles of two reusable bucket buffers per GPU, matched by
  GPU UUID; a TCP store carries the "filled"/"released" signals. In `ipc.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from rlpost.sync.buckets import Bucket


@dataclass(frozen=True)
class SyncGroupInfo:
    """Where a sync group meets. Broadcast transports: rank 0 (learner rank 0) sends, ranks 1..world_size-1
    receive. IPC: every learner rank sends to the engine workers on its own GPU; `ipc_senders` maps a GPU UUID to
    the (host, port, number of receivers) of the store that the sender on that GPU hosts."""

    transport: str
    host: str
    port: int
    world_size: int
    timeout_s: float
    ipc_senders: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    slot_bytes: int = 0  # IPC: size of each reusable buffer, the plan's largest bucket


def broadcast_layout(num_engines: int, tensor_parallel_size: int) -> tuple[int, list[int]]:
    """A broadcast group's size and each engine's first receiver rank: learner rank 0 is rank 0, engine i's
    tensor-parallel workers are ranks 1 + i * tp + (0 .. tp-1). Every TP worker receives whole tensors; the model's
    weight loaders keep their own slice."""
    tp = tensor_parallel_size
    return 1 + num_engines * tp, [1 + i * tp for i in range(num_engines)]


class WeightTransport(ABC):
    name: str = ""

    def send_buffer(self, bucket: Bucket, device: torch.device) -> torch.Tensor:
        """Sender: the flat buffer to pack the next bucket into before `send`. Transports with staging memory of
        their own (IPC) hand it out here, so a bucket's bytes are written once."""
        return torch.empty(bucket.numel, dtype=bucket.dtype, device=device)

    @abstractmethod
    def send(self, flat: torch.Tensor) -> None:
        """Sender: deliver one bucket's flat buffer to every receiver. It may return before the receivers have
        loaded it; `flush` waits for that."""

    def flush(self) -> None:  # noqa: B027 - broadcasts are complete when `send` returns
        """Sender: block until every receiver has finished with everything sent."""

    @abstractmethod
    def receive(self, bucket: Bucket) -> torch.Tensor:
        """Receiver: return the next bucket's flat buffer (numel and dtype from the plan). The buffer stays valid
        until `release`."""

    def release(self) -> None:  # noqa: B027 - a broadcast's buffer belongs to the receiver
        """Receiver: done with the buffer returned by the last `receive` (it has been loaded)."""

    @abstractmethod
    def close(self) -> None:
        """Release the group. Safe to call twice."""


TRANSPORTS = ("gloo", "nccl", "ipc")


def choose_transport(requested: str, device: str, colocated: bool) -> str:
    """`sync.transport=auto` resolved from placement: gloo on CPU; on GPUs, CUDA IPC when learner and engines share
    the GPUs (NCCL refuses two ranks on one GPU), NCCL broadcast when they sit on different GPUs."""
    if requested != "auto":
        return requested
    if device == "cpu":
        return "gloo"
    return "ipc" if colocated else "nccl"


def create_transport(info: SyncGroupInfo, rank: int) -> WeightTransport:
    """The one place that maps a transport name to its implementation. `rank` 0 is a sender; for IPC every
    learner rank passes 0 and finds its store by its GPU's UUID."""
    if info.transport == "gloo":
        from rlpost.sync.broadcast import GlooTransport

        return GlooTransport(info, rank)
    if info.transport == "nccl":
        from rlpost.sync.broadcast import NcclTransport

        return NcclTransport(info, rank)
    if info.transport == "ipc":
        from rlpost.sync.ipc import IpcTransport

        return IpcTransport(info, sender=rank == 0)
    raise ValueError(f"sync.transport={info.transport!r} is not available; choose one of {TRANSPORTS} or auto")
