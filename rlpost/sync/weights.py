"""Send and receive loops shared by every transport: bucket by bucket, so peak extra memory is one bucket."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from rlpost.sync.buckets import Bucket, flatten, unflatten
from rlpost.sync.transport import WeightTransport

NamedTensors = list[tuple[str, torch.Tensor]]


def send_weights(transport: WeightTransport | None, plan: list[Bucket],
                 gather: Callable[[Bucket], AbstractContextManager[list[torch.Tensor]]]) -> dict[str, float]:
    """Sender loop. `gather(bucket)` is a context manager giving the bucket's full tensors for as long as it is
    open (the learner gathers ZeRO-3 shards there and frees them on exit). Gathering is collective, so every
    learner rank walks the plan in the same order; ranks other than the sender pass transport=None."""
    t0 = time.perf_counter()
    nbytes = 0
    for bucket in plan:
        with gather(bucket) as tensors:
            if transport is not None:
                transport.send(flatten(tensors, bucket, tensors[0].device))
                nbytes += bucket.nbytes
    if transport is not None:
        transport.flush()
    seconds = time.perf_counter() - t0
    return {"sync/seconds": seconds, "sync/gb": nbytes / 1e9, "sync/gb_per_s": nbytes / 1e9 / max(seconds, 1e-9),
            "sync/buckets": float(len(plan))}


def receive_weights(transport: WeightTransport, plan: list[Bucket], load: Callable[[NamedTensors], None]) -> int:
    """Receiver loop: hand each bucket's named tensors to the engine's `load` as soon as it arrives."""
    count = 0
    for bucket in plan:
        load(unflatten(transport.receive(bucket), bucket))
        transport.release()
        count += len(bucket.specs)
    return count
