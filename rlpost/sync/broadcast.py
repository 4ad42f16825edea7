"""Broadcast transports: a dedicated process group (TCPStore + ProcessGroupGloo / ProcessGroupNCCL) in which
learner rank 0 broadcasts each flat bucket to every engine worker.

Built directly from a TCPStore rather than `dist.init_process_group`, because the learner processes already have
a default (training) group and vLLM's workers have their own; a standalone group touches neither. The gloo and
NCCL transports share everything but the process-group class and the device of the buffers, so the CPU tests of
the gloo twin cover the protocol the NCCL one runs on GPUs.

Timeouts: every wait is bounded by `sync.timeout_s`. A member that never joins makes the TCPStore construction
fail after the timeout; a broadcast that never completes fails `Work.wait`. Both raise, never hang.
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import timedelta

import torch
import torch.distributed as dist

from rlpost.sync.buckets import Bucket
from rlpost.sync.store import tcp_store
from rlpost.sync.transport import SyncGroupInfo, WeightTransport


class _BroadcastTransport(WeightTransport):
    def __init__(self, info: SyncGroupInfo, rank: int) -> None:
        self.rank = rank
        self._timeout = timedelta(seconds=info.timeout_s)
        # Every member blocks here until all world_size members have joined (or the timeout passes).
        self._store = tcp_store(info.host, info.port, info.world_size, rank == 0, self._timeout)
        self._group = self._make_group(self._store, rank, info.world_size)

    @abstractmethod
    def _make_group(self, store: dist.Store, rank: int, world_size: int) -> dist.ProcessGroup:
        """The process group over `store` (gloo or NCCL)."""

    @abstractmethod
    def _device(self) -> torch.device:
        """Where receive buffers live."""

    def send(self, flat: torch.Tensor) -> None:
        assert self.rank == 0, "only rank 0 sends"
        self._group.broadcast(flat.contiguous(), 0).wait(self._timeout)

    def receive(self, bucket: Bucket) -> torch.Tensor:
        flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=self._device())
        self._group.broadcast(flat, 0).wait(self._timeout)
        return flat

    def close(self) -> None:
        # NCCL frees its communicator (and GPU buffers) here rather than whenever the group is collected; a
        # re-created sync group (a new bucket size, a restarted engine) must not pile them up.
        if self._group is not None and hasattr(self._group, "shutdown"):
            self._group.shutdown()
        self._group = None
        self._store = None


class GlooTransport(_BroadcastTransport):
    name = "gloo"

    def _make_group(self, store: dist.Store, rank: int, world_size: int) -> dist.ProcessGroup:
        return dist.ProcessGroupGloo(store, rank, world_size, self._timeout)

    def _device(self) -> torch.device:
        return torch.device("cpu")


class NcclTransport(_BroadcastTransport):
    name = "nccl"

    def _make_group(self, store: dist.Store, rank: int, world_size: int) -> dist.ProcessGroup:
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = self._timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())
