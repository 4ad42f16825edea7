"""CUDA IPC transport: learner and rollout engine share a GPU, so weights never leave it.

Each learner rank (the *sender*) owns two bucket-sized GPU buffers ("slots") and publishes their CUDA IPC handles
once, at set-up; every engine worker on the same GPU (a *receiver*) maps them once. Per bucket the sender packs
bucket k straight into slot k % 2 (`send_buffer`) and sets `filled/k` in a TCP store it hosts; receivers wait for
that key, copy out of the slot (`rlpost.sync.direct`, or the engine's `load_weights`), and set
`done/k/<receiver>`. The sender waits for those before it reuses a slot, so it packs bucket k+1 while receivers
load bucket k. Only the signals go through the store (bytes per bucket); the weights move GPU-to-GPU within one
device's memory, twice: into the slot, out of it.

Senders and receivers find each other by GPU UUID, not device index: each process sees its GPU under its own
`CUDA_VISIBLE_DEVICES` numbering, and a CUDA IPC handle must be opened on the device that owns it.
Every wait is bounded by `sync.timeout_s` (the store's timeout): a dead peer raises instead of hanging.

The handles travel as JSON (`slot_record` / `rebuild_args`): only the CUDA handles' bytes and integers, never a
pickle, since whoever reaches the store could otherwise have a receiver unpickle (run) what they wrote. The
receiver supplies the rest (a flat uint8 tensor on its own device) itself.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from rlpost.sync.buckets import Bucket
from rlpost.sync.store import tcp_store
from rlpost.sync.transport import SyncGroupInfo, WeightTransport

SLOTS = 2
# rebuild_cuda_tensor's arguments, as reduce_tensor gives them for a CUDA tensor; the record keeps the named ones
_ARGS = ("tensor_cls", "size", "stride", "tensor_offset", "storage_cls", "dtype", "device", "handle", "size_bytes",
         "offset_bytes", "requires_grad", "ref_counter_handle", "ref_counter_offset", "event_handle",
         "event_sync_required")
_BYTES = ("handle", "ref_counter_handle", "event_handle")
_INTS = ("numel", "tensor_offset", "size_bytes", "offset_bytes", "ref_counter_offset")


def slot_record(args: tuple) -> dict[str, Any]:
    """The JSON-safe part of a uint8 slot's `reduce_tensor` arguments: its length, and its CUDA handles."""
    named = dict(zip(_ARGS, args, strict=True))
    record = {k: int(named[k]) for k in _INTS if k != "numel"}
    record |= {k: None if named[k] is None else base64.b64encode(named[k]).decode() for k in _BYTES}
    return {"numel": int(named["size"][0]), **record, "event_sync_required": bool(named["event_sync_required"])}


def rebuild_args(record: dict[str, Any], device: int) -> tuple:
    """`rebuild_cuda_tensor`'s arguments for a flat uint8 slot on `device`, from a record that arrived over the
    network: every field is checked to be the plain type it must be, the tensor's kind is our own."""
    if not isinstance(record, dict):
        raise ValueError(f"IPC handle record is a {type(record).__name__}, not an object")
    ints = {k: record.get(k) for k in _INTS}
    if any(type(v) is not int or v < 0 for v in ints.values()) or type(record.get("event_sync_required")) is not bool:
        raise ValueError(f"IPC handle record has bad fields: {sorted(record)}")
    raw = {}
    for key in _BYTES:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"IPC handle record: {key} is not base64 text")
        raw[key] = None if value is None else base64.b64decode(value, validate=True)
    return (torch.Tensor, (ints["numel"],), (1,), ints["tensor_offset"], torch.storage.TypedStorage, torch.uint8,
            device, raw["handle"], ints["size_bytes"], ints["offset_bytes"], False, raw["ref_counter_handle"],
            ints["ref_counter_offset"], raw["event_handle"], record["event_sync_required"])


def gpu_uuid() -> str:
    """The current CUDA device's UUID, the same string in every process that sees this GPU."""
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


class SlotTransport(WeightTransport):
    """The handshake of the IPC transport over two shared slots, independent of how the slots are shared (the
    CPU tests run it with tensors shared between threads; `IpcTransport` shares GPU buffers between processes).
    `store`: a TCPStore the sender hosts; `index`: this receiver's number among `num_receivers`."""

    name = "slots"

    def __init__(self, store: dist.Store, slots: list[torch.Tensor], num_receivers: int, sender: bool,
                 index: int = 0) -> None:
        self._store, self._slots, self.num_receivers, self.sender, self.index = (
            store, slots, num_receivers, sender, index)
        self._seq = 0  # buckets moved so far; both sides walk the same sequence, so keys line up
        self._pending: list[int] = []  # sender: buckets not yet released by every receiver, oldest first

    def _synchronize(self) -> None:
        """Make this process's writes to (sender) or reads from (receiver) a slot visible/finished."""

    # ---- sender -----------------------------------------------------------------------------------------
    def _await_release(self, seq: int) -> None:
        keys = [f"done/{seq}/{r}" for r in range(self.num_receivers)]
        self._store.wait(keys)
        for key in keys + [f"filled/{seq}"]:
            self._store.delete_key(key)

    def _claim(self, nbytes: int) -> torch.Tensor:
        """The next slot (its first `nbytes`), once every receiver has released what it held before."""
        if len(self._pending) == SLOTS:
            self._await_release(self._pending.pop(0))  # the slot we are about to overwrite must be loaded
        if nbytes > self._slots[0].numel():
            raise ValueError(f"bucket of {nbytes} B exceeds the IPC slot of {self._slots[0].numel()} B")
        return self._slots[self._seq % SLOTS][:nbytes]

    def send_buffer(self, bucket: Bucket, device: torch.device) -> torch.Tensor:
        assert self.sender, "only learner ranks send"
        return self._claim(bucket.nbytes).view(bucket.dtype)

    def send(self, flat: torch.Tensor) -> None:
        assert self.sender, "only learner ranks send"
        nbytes = flat.numel() * flat.element_size()
        slot = self._claim(nbytes)
        if flat.data_ptr() != slot.data_ptr():  # not packed in place (`send_buffer`): copy it in
            slot.view(flat.dtype).copy_(flat.reshape(-1))
        self._synchronize()  # the receivers read the slot from another process: the bytes must be there
        self._store.set(f"filled/{self._seq}", b"1")
        self._pending.append(self._seq)
        self._seq += 1

    def flush(self) -> None:
        while self._pending:
            self._await_release(self._pending.pop(0))

    # ---- receiver ---------------------------------------------------------------------------------------
    def receive(self, bucket: Bucket) -> torch.Tensor:
        self._store.wait([f"filled/{self._seq}"])
        return self._slots[self._seq % SLOTS][:bucket.nbytes].view(bucket.dtype)

    def release(self) -> None:
        self._synchronize()  # load_weights' copies out of the slot must be finished before it is reused
        self._store.set(f"done/{self._seq}/{self.index}", b"1")
        self._seq += 1

    def close(self) -> None:
        self._slots = []
        self._store = None


class IpcTransport(SlotTransport):
    """CUDA IPC handles of the sender's two slots, opened once by every receiver on the same GPU."""

    name = "ipc"

    def __init__(self, info: SyncGroupInfo, sender: bool) -> None:
        uuid = gpu_uuid()
        if uuid not in info.ipc_senders:
            raise RuntimeError(f"sync.transport=ipc: no learner rank shares this engine's GPU {uuid}; colocate "
                               "every engine with a learner rank (cluster=single_gpu) or use cluster=split (nccl)")
        host, port, num_receivers = info.ipc_senders[uuid]
        store = tcp_store(host, port, 1 + num_receivers, sender, timedelta(seconds=info.timeout_s))
        device = torch.cuda.current_device()
        index = 0
        if sender:
            slots = [torch.empty(info.slot_bytes, dtype=torch.uint8, device=device) for _ in range(SLOTS)]
            store.set("handles", json.dumps([slot_record(reduce_tensor(s)[1]) for s in slots]))
        else:
            index = store.add("receivers", 1) - 1
            records = json.loads(store.get("handles"))
            if not isinstance(records, list) or len(records) != SLOTS:
                raise ValueError(f"IPC handles: expected {SLOTS} slot records from the sender")
            slots = [rebuild_cuda_tensor(*rebuild_args(record, device)) for record in records]
        super().__init__(store, slots, num_receivers, sender, index)

    def _synchronize(self) -> None:
        # The other side is another process: the copy into (or out of) the slot must have finished on the GPU.
        torch.cuda.synchronize()
