"""Bucketing of named tensors for weight sync.

Sending one message per parameter is what made weight sync a large share of step time for users of per-tensor
designs (hundreds of small broadcasts, each paying latency). We instead pack parameters into flat buffers of
about `bucket_bytes` each and send one collective per bucket. The bucket plan (names, shapes, dtypes, offsets)
is static for a model, so it is computed once by the sender and handed to every receiver at set-up; at sync time
only the flat buffers move.

A bucket never mixes dtypes (a flat buffer has one dtype), and a tensor larger than the bucket size gets a
bucket of its own rather than being split: splitting would save a little peak memory but complicates every
transport, and the largest tensor (the embedding) has to be materialised whole by `load_weights` anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class Bucket:
    specs: tuple[TensorSpec, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.specs[0].dtype

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.specs)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)


def plan_buckets(specs: Iterable[TensorSpec], bucket_bytes: int) -> list[Bucket]:
    """Greedy, order-preserving packing: start a new bucket when the dtype changes or the next tensor would
    push the bucket past `bucket_bytes`. Order is kept so that the sender can gather parameters lazily (ZeRO-3)
    in the same order it packs them."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    current: list[TensorSpec] = []
    size = 0
    for spec in specs:
        if current and (spec.dtype != current[0].dtype or size + spec.nbytes > bucket_bytes):
            buckets.append(Bucket(tuple(current)))
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    if current:
        buckets.append(Bucket(tuple(current)))
    return buckets


def flatten(tensors: list[torch.Tensor], bucket: Bucket, device: torch.device | str = "cpu",
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack `tensors` (in the bucket's order, with its shapes and dtype) into one contiguous 1-D buffer: `out`
    when given (a transport's own buffer, so the bytes are written once), else a new one on `device`. One
    concatenation kernel, not one copy per tensor: a bucket holds hundreds of small tensors."""
    for spec, t in zip(bucket.specs, tensors, strict=True):
        if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
            raise ValueError(f"{spec.name}: expected {spec.shape} {spec.dtype}, got {tuple(t.shape)} {t.dtype}")
    if out is None:
        out = torch.empty(bucket.numel, dtype=bucket.dtype, device=device)
    return torch.cat([t.reshape(-1) for t in tensors], out=out)


def unflatten(flat: torch.Tensor, bucket: Bucket) -> list[tuple[str, torch.Tensor]]:
    """Views into `flat`, one per tensor of the bucket: no copy (the consumer's `load_weights` copies)."""
    out = []
    offset = 0
    for spec in bucket.specs:
        out.append((spec.name, flat[offset:offset + spec.numel].view(spec.shape)))
        offset += spec.numel
    if offset != flat.numel():
        raise ValueError(f"bucket buffer has {flat.numel()} elements, plan expects {offset}")
    return out
