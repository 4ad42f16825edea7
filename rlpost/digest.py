"""One definition of "the same weights": a SHA-256 over every parameter's name, dtype, shape and bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
