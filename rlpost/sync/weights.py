"""Send and receive loops shared by every transport: bucket by bucket, so peak extra memory is one bucket."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from rlpost.sync.buckets import Bucket, flatten, unflatten
from rlpost.sync.direct import DirectCopy
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
            if transport is not None:  # packed straight into the transport's buffer
                flat = flatten(tensors, bucket, out=transport.send_buffer(bucket, tensors[0].device))
                transport.send(flat)
                nbytes += bucket.nbytes
    if transport is not None:
        transport.flush()
    seconds = time.perf_counter() - t0
    return {"sync/seconds": seconds, "sync/gb": nbytes / 1e9, "sync/gb_per_s": nbytes / 1e9 / max(seconds, 1e-9),
            "sync/buckets": float(len(plan))}


def receive_weights(transport: WeightTransport, plan: list[Bucket], load: Callable[[NamedTensors], None],
                    direct: DirectCopy | None = None) -> int:
    """Receiver loop: hand each bucket's named tensors to the engine as soon as it arrives: through `direct`
    (straight copies where proven, `load` for the rest) when given, else all through `load`."""
    count = 0
    for index, bucket in enumerate(plan):
        named = unflatten(transport.receive(bucket), bucket)
        if direct is None:
            load(named)
        else:
            direct.load(index, named, load)
        transport.release()
        count += len(bucket.specs)
    return count
