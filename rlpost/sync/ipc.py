"""CUDA IPC transport: learner and rollout engine share a GPU, so weights never leave it.

Each learner rank (the *sender*) owns two bucket-sized GPU buffers ("slots") and publishes their CUDA IPC handles
once, at set-up; every engine worker on the same GPU (a *receiver*) maps them once. Per bucket the sender copies
the flat bucket into slot k % 2 and sets `filled/k` in a TCP store it hosts; receivers wait for that key, hand
views of the slot to the engine's `load_weights` (which copies), and set `done/k/<receiver>`. The sender waits for
those before it reuses a slot, so it packs bucket k+1 while receivers load bucket k. Only the signals go through
the store (bytes per bucket); the weights move GPU-to-GPU within one device's memory.

Senders and receivers find each other by GPU UUID, not device index: each process sees its GPU under its own
`CUDA_VISIBLE_DEVICES` numbering, and a CUDA IPC handle must be opened on the device that owns it.
Every wait is bounded by `sync.timeout_s` (the store's timeout): a dead peer raises instead of hanging.
"""

from __future__ import annotations

import pickle
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from rlpost.sync.buckets import Bucket
from rlpost.sync.transport import SyncGroupInfo, WeightTransport

SLOTS = 2
_DEVICE_ARG = 6  # position of `storage_device` in rebuild_cuda_tensor's arguments


def gpu_uuid() -> str:
    """The current CUDA device's UUID, the same string in every process that sees this GPU."""
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


class IpcTransport(WeightTransport):
    name = "ipc"

    def __init__(self, info: SyncGroupInfo, sender: bool) -> None:
        uuid = gpu_uuid()
        if uuid not in info.ipc_senders:
            raise RuntimeError(f"sync.transport=ipc: no learner rank shares this engine's GPU {uuid}; colocate "
                               "every engine with a learner rank (cluster=single_gpu) or use cluster=split (nccl)")
        host, port, self.num_receivers = info.ipc_senders[uuid]
        self.sender = sender
        self._seq = 0  # buckets moved so far; both sides walk the same sequence, so keys line up
        self._store = dist.TCPStore(host, port, 1 + self.num_receivers, is_master=sender,
                                    timeout=timedelta(seconds=info.timeout_s))
        device = torch.cuda.current_device()
        if sender:
            self._slots = [torch.empty(info.slot_bytes, dtype=torch.uint8, device=device) for _ in range(SLOTS)]
            self._store.set("handles", pickle.dumps([reduce_tensor(s)[1] for s in self._slots]))
        else:
            self.index = self._store.add("receivers", 1) - 1
            handles = pickle.loads(self._store.get("handles"))
            self._slots = [rebuild_cuda_tensor(*args[:_DEVICE_ARG], device, *args[_DEVICE_ARG + 1:])
                           for args in handles]

    # ---- sender -----------------------------------------------------------------------------------------
    def _await_release(self, seq: int) -> None:
        keys = [f"done/{seq}/{r}" for r in range(self.num_receivers)]
        self._store.wait(keys)
        for key in keys + [f"filled/{seq}"]:
            self._store.delete_key(key)

    def send(self, flat: torch.Tensor) -> None:
        assert self.sender, "only learner ranks send"
        if self._seq >= SLOTS:
            self._await_release(self._seq - SLOTS)  # the slot we are about to overwrite must be loaded
        nbytes = flat.numel() * flat.element_size()
        if nbytes > self._slots[0].numel():
            raise ValueError(f"bucket of {nbytes} B exceeds the IPC slot of {self._slots[0].numel()} B")
        slot = self._slots[self._seq % SLOTS][:nbytes]
        slot.view(flat.dtype).copy_(flat.reshape(-1))
        torch.cuda.current_stream().synchronize()  # the receivers read from another process: bytes must be there
        self._store.set(f"filled/{self._seq}", b"1")
        self._seq += 1

    def flush(self) -> None:
        for seq in range(max(self._seq - SLOTS, 0), self._seq):
            if self._store.check([f"filled/{seq}"]):
                self._await_release(seq)

    # ---- receiver ---------------------------------------------------------------------------------------
    def receive(self, bucket: Bucket) -> torch.Tensor:
        self._store.wait([f"filled/{self._seq}"])
        return self._slots[self._seq % SLOTS][:bucket.nbytes].view(bucket.dtype)

    def release(self) -> None:
        torch.cuda.synchronize()  # load_weights' copies out of the slot must be finished before it is reused
        self._store.set(f"done/{self._seq}/{self.index}", b"1")
        self._seq += 1

    def close(self) -> None:
        self._slots = []
        self._store = None
