"""The methods vLLM's GPU workers gain from rlpost (`worker_extension_cls`), called through `collective_rpc`.

vLLM 0.25 also ships a native weight-transfer API (`WeightTransferConfig`, `update_weights`); we keep our own
extension so that one protocol (`rlpost.sync`: bucket plan, transports, send/receive loops) serves the HF engine,
vLLM, gloo, NCCL and CUDA IPC alike, and is tested on CPU through its gloo twin. The extension is three calls:
`rlpost_init_sync` (join the sync group, keep the plan), `rlpost_receive` (load one full set of weights) and
`rlpost_gpu_uuid` (placement). Names carry the `rlpost_` prefix because vLLM refuses an extension whose attribute
collides with the worker's own (the worker already has `update_weights`).

Arguments cross vLLM's RPC as plain lists and dicts (no pickled classes, no `VLLM_ALLOW_INSECURE_SERIALIZATION`).
"""

from __future__ import annotations

from typing import Any

import torch

from rlpost.digest import weights_digest
from rlpost.sync.buckets import Bucket, TensorSpec
from rlpost.sync.direct import DirectCopy
from rlpost.sync.transport import SyncGroupInfo, WeightTransport, create_transport
from rlpost.sync.weights import receive_weights


def plan_to_wire(plan: list[Bucket]) -> list[list[list[Any]]]:
    return [[[s.name, list(s.shape), str(s.dtype).removeprefix("torch.")] for s in b.specs] for b in plan]


def plan_from_wire(wire: list[list[list[Any]]]) -> list[Bucket]:
    return [Bucket(tuple(TensorSpec(name, tuple(shape), getattr(torch, dtype)) for name, shape, dtype in b))
            for b in wire]


def info_from_wire(wire: dict[str, Any]) -> SyncGroupInfo:
    senders = {uuid: tuple(v) for uuid, v in wire.get("ipc_senders", {}).items()}
    return SyncGroupInfo(**{**wire, "ipc_senders": senders})


class WeightSyncExtension:
    _rlpost_transport: WeightTransport | None = None
    _rlpost_plan: list[Bucket] = []
    _rlpost_direct: DirectCopy | None = None

    def rlpost_gpu_uuid(self) -> str:
        from rlpost.sync.ipc import gpu_uuid

        return gpu_uuid()

    def rlpost_init_sync(self, info: dict[str, Any], first_rank: int, plan: list[list[list[Any]]]) -> None:
        """Join as receiver `first_rank + tensor-parallel rank` (every TP shard receives whole tensors; the
        model's weight loaders keep their slice)."""
        if self._rlpost_transport is not None:
            self._rlpost_transport.close()
        self._rlpost_plan = plan_from_wire(plan)
        model = self.get_model()
        # vLLM models name the modules they fuse (q/k/v -> qkv_proj, ...) in `packed_modules_mapping`.
        self._rlpost_direct = DirectCopy(self._rlpost_plan, dict(model.named_parameters()),
                                         getattr(model, "packed_modules_mapping", {}))
        self._rlpost_transport = create_transport(info_from_wire(info), first_rank + self.rank)

    def rlpost_receive(self) -> int:
        assert self._rlpost_transport is not None, "rlpost_init_sync first"
        model = self.get_model()
        return receive_weights(self._rlpost_transport, self._rlpost_plan,
                               lambda named: model.load_weights(weights=named), self._rlpost_direct)

    def rlpost_weights_digest(self) -> str:
        return weights_digest(self.get_model().named_parameters())
