"""gloo transport: a dedicated CPU process group (TCPStore + ProcessGroupGloo) broadcasting flat buckets.

Built directly from a TCPStore rather than `dist.init_process_group`, because the learner processes already
have a default (training) group and the rollout engines have none; a standalone group touches neither.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from rlpost.sync.buckets import Bucket
from rlpost.sync.transport import SyncGroupInfo, WeightTransport


class GlooTransport(WeightTransport):
    name = "gloo"

    def __init__(self, info: SyncGroupInfo, rank: int) -> None:
        timeout = timedelta(seconds=info.timeout_s)
        # Every member blocks here until all world_size members have joined (or the timeout passes).
        self._store = dist.TCPStore(info.host, info.port, info.world_size, is_master=rank == 0, timeout=timeout)
        self._group = dist.ProcessGroupGloo(self._store, rank, info.world_size, timeout)
        self.rank = rank
        self._timeout = timeout

    def send(self, flat: torch.Tensor) -> None:
        assert self.rank == 0, "only rank 0 sends"
        self._group.broadcast(flat.contiguous(), 0).wait(self._timeout)

    def receive(self, bucket: Bucket) -> torch.Tensor:
        flat = torch.empty(bucket.numel, dtype=bucket.dtype)
        self._group.broadcast(flat, 0).wait(self._timeout)
        return flat

    def close(self) -> None:
        self._group = None
        self._store = None
