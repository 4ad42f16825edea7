"""Bucketing of named tensors and the gloo transport (two ranks in threads of this process)."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import free_port

from rlpost.sync.buckets import Bucket, TensorSpec, flatten, plan_buckets, unflatten
from rlpost.sync.transport import SyncGroupInfo, broadcast_layout, choose_transport, create_transport
from rlpost.sync.weights import receive_weights, send_weights


def spec(name: str, *shape: int, dtype: torch.dtype = torch.float32) -> TensorSpec:
    return TensorSpec(name, tuple(shape), dtype)


def test_spec_sizes() -> None:
    assert spec("a", 3, 4).numel == 12
    assert spec("a", 3, 4).nbytes == 48
    assert spec("b", 10, dtype=torch.bfloat16).nbytes == 20


def test_plan_packs_greedily_in_order() -> None:
    # 40 B + 40 B fit a 100 B bucket, the third (40 B) would make 120 B -> new bucket.
    specs = [spec("a", 10), spec("b", 10), spec("c", 10)]
    plan = plan_buckets(specs, 100)
    assert [[s.name for s in b.specs] for b in plan] == [["a", "b"], ["c"]]
    assert plan[0].nbytes == 80 and plan[0].numel == 20


def test_plan_large_tensor_gets_own_bucket_and_dtype_splits() -> None:
    specs = [spec("small", 2), spec("huge", 1000), spec("half", 4, dtype=torch.bfloat16), spec("tail", 2)]
    plan = plan_buckets(specs, 64)
    assert [[s.name for s in b.specs] for b in plan] == [["small"], ["huge"], ["half"], ["tail"]]
    assert plan[2].dtype == torch.bfloat16


def test_plan_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError):
        plan_buckets([spec("a", 1)], 0)


def test_flatten_unflatten_round_trip() -> None:
    bucket = Bucket((spec("w", 2, 3), spec("b", 3)))
    w, b = torch.arange(6.0).view(2, 3), torch.tensor([7.0, 8.0, 9.0])
    flat = flatten([w, b], bucket)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    (n1, w2), (n2, b2) = unflatten(flat, bucket)
    assert (n1, n2) == ("w", "b")
    assert torch.equal(w2, w) and torch.equal(b2, b)


def test_flatten_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="w: expected"):
        flatten([torch.zeros(3, 2)], Bucket((spec("w", 2, 3),)))


@pytest.mark.parametrize("num_engines, tp", [(2, 1), (2, 2)])
def test_gloo_transport_sends_every_bucket_to_every_receiver(num_engines: int, tp: int) -> None:
    """One sender and every engine worker of the broadcast layout (2 engines x TP 1, and 2 engines x TP 2 as in
    issue 7's 2-rollout-GPU run), each in its own thread with its own group member, over two full syncs."""
    world_size, first_ranks = broadcast_layout(num_engines, tp)
    assert first_ranks == ([1, 2] if tp == 1 else [1, 3]) and world_size == 1 + num_engines * tp
    ranks = [first + k for first in first_ranks for k in range(tp)]
    assert ranks == list(range(1, world_size))  # every non-sender rank is one engine worker, none twice
    weights = {"embed": torch.randn(50, 8), "norm": torch.randn(8), "head": torch.randn(8, 50)}
    plan = plan_buckets([TensorSpec(n, tuple(t.shape), t.dtype) for n, t in weights.items()], 1700)
    assert len(plan) >= 2  # the test must exercise several buckets
    info = SyncGroupInfo("gloo", "127.0.0.1", free_port(), world_size=world_size, timeout_s=30)
    received: dict[int, list[dict[str, torch.Tensor]]] = {r: [{}, {}] for r in ranks}
    errors: list[BaseException] = []

    def receiver(rank: int) -> None:
        try:
            transport = create_transport(info, rank)
            for sync in range(2):
                receive_weights(transport, plan, lambda named, s=sync: received[rank][s].update(
                    {n: t.clone() for n, t in named}))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=receiver, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    sender = create_transport(info, 0)
    sent = [weights, {n: t + 1 for n, t in weights.items()}]  # the second sync carries new values
    for version in sent:
        stats = send_weights(sender, plan, lambda b, v=version: _nullctx([v[s.name] for s in b.specs]))
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    for rank in ranks:
        for sync, version in enumerate(sent):
            assert set(received[rank][sync]) == set(weights)
            for name, tensor in version.items():
                assert torch.equal(received[rank][sync][name], tensor)
    assert stats["sync/buckets"] == len(plan)
    assert stats["sync/gb"] == pytest.approx(sum(t.numel() * 4 for t in weights.values()) / 1e9)


class _nullctx:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def test_transport_follows_placement() -> None:
    assert choose_transport("auto", "cpu", colocated=False) == "gloo"
    assert choose_transport("auto", "cuda", colocated=True) == "ipc"
    assert choose_transport("auto", "cuda", colocated=False) == "nccl"
    assert choose_transport("gloo", "cuda", colocated=False) == "gloo"  # an explicit choice wins


def test_missing_receiver_times_out_instead_of_hanging() -> None:
    """A group member that never shows up (a dead engine) makes set-up raise after sync.timeout_s."""
    import time

    info = SyncGroupInfo("gloo", "127.0.0.1", free_port(), world_size=2, timeout_s=2)
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="(?i)timed out|timeout"):
        create_transport(info, 0)
    assert time.perf_counter() - t0 < 30


def test_ipc_slot_handshake_over_several_syncs() -> None:
    """The IPC transport's handshake (two reusable slots, filled/done keys in the sender's store), with the
    slots shared between threads instead of GPU processes: one sender, two receivers, three full syncs of
    five buckets each. The second sync is where a sender that re-awaited already-released buckets hung."""
    from datetime import timedelta

    import torch.distributed as dist

    from rlpost.sync.ipc import SLOTS, SlotTransport

    weights = {f"w{i}": torch.randn(40) for i in range(5)}
    plan = plan_buckets([TensorSpec(n, tuple(t.shape), t.dtype) for n, t in weights.items()], 160)
    assert len(plan) == 5
    slots = [torch.empty(max(b.nbytes for b in plan), dtype=torch.uint8) for _ in range(SLOTS)]
    port, timeout = free_port(), timedelta(seconds=20)
    received: dict[int, list[dict[str, torch.Tensor]]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def receiver(index: int) -> None:
        try:
            store = dist.TCPStore("127.0.0.1", port, 3, is_master=False, timeout=timeout)
            transport = SlotTransport(store, slots, 2, sender=False, index=index)
            for _ in range(3):
                got: dict[str, torch.Tensor] = {}
                receive_weights(transport, plan, lambda named, g=got: g.update({n: t.clone() for n, t in named}))
                received[index].append(got)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=receiver, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    sender = SlotTransport(dist.TCPStore("127.0.0.1", port, 3, is_master=True, timeout=timeout), slots, 2, True)
    sent = []
    for sync in range(3):
        current = {n: t + sync for n, t in weights.items()}
        send_weights(sender, plan, lambda b, c=current: _nullctx([c[s.name] for s in b.specs]))
        sent.append(current)
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    for index in (0, 1):
        assert len(received[index]) == 3
        for got, expected in zip(received[index], sent, strict=True):
            assert all(torch.equal(got[n], expected[n]) for n in weights)
    assert sender._pending == []  # every bucket released: the next sync starts with both slots free


def test_tcp_store_on_loopback_listens_on_loopback_only() -> None:
    """torch's TCPStore server listens on every interface whatever host it is given; ours, for a loopback host,
    on loopback alone (a local cluster's learners and sync groups), and it still serves clients."""
    from datetime import timedelta

    import psutil
    import torch.distributed as dist

    from rlpost.sync.store import free_port, is_loopback, tcp_store

    def listeners() -> set[str]:
        return {c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN}

    before = listeners()
    port = free_port("127.0.0.1")
    client = threading.Thread(target=lambda: dist.TCPStore("127.0.0.1", port, 2, is_master=False,
                                                           timeout=timedelta(seconds=10)).set("k", b"v"))
    client.start()
    store = tcp_store("127.0.0.1", port, 2, True, timedelta(seconds=10))
    client.join()
    assert store.get("k") == b"v"
    new = listeners() - before
    assert new and all(is_loopback(ip) for ip in new), new
    plain = dist.TCPStore("127.0.0.1", free_port("127.0.0.1"), 1, is_master=True, timeout=timedelta(seconds=10))
    assert not all(is_loopback(ip) for ip in listeners() - before - new)  # the test can fail: torch's own doesn't
    del plain


def test_ipc_handles_travel_as_json() -> None:
    """The IPC sender publishes its slots' CUDA handles as JSON records (no pickle crosses the store); a receiver
    rebuilds the arguments of `rebuild_cuda_tensor` from them with its own tensor kind and device, and refuses a
    record of any other shape. The CUDA part itself runs in tests/test_gpu.py."""
    import json

    from rlpost.sync.ipc import rebuild_args, slot_record

    # What reduce_tensor gives for a CUDA uint8 slot of 4096 bytes (handles are opaque bytes).
    args = (torch.Tensor, torch.Size([4096]), (1,), 0, torch.storage.TypedStorage, torch.uint8, 3, b"\x01handle",
            4096, 0, False, b"\x02refcount", 8, b"\x03event", True)
    record = json.loads(json.dumps(slot_record(args)))
    assert rebuild_args(record, device=0) == (*args[:6], 0, *args[7:])
    for bad in ({**record, "size_bytes": "4096"}, {**record, "handle": 1}, {**record, "numel": -1}, [record]):
        with pytest.raises(ValueError, match="IPC handle record"):
            rebuild_args(bad, device=0)


def _ipc_receiver(info, queue) -> None:
    from rlpost.sync.ipc import IpcTransport

    transport = IpcTransport(info, sender=False)
    transport._store.wait(["filled/ready"])
    queue.put([slot.cpu().tolist() for slot in transport._slots])
    transport._store.set("done/read/0", b"1")  # the sender keeps its slots alive until this key is there


@pytest.mark.gpu
def test_ipc_handles_open_in_another_process() -> None:
    """The JSON handle records on a real GPU: a second process maps the sender's two slots through them and
    reads what the sender wrote (the store on loopback, as a local cluster's)."""
    import torch.multiprocessing as mp

    from rlpost.sync.ipc import IpcTransport, gpu_uuid
    from rlpost.sync.store import free_port

    torch.cuda.init()
    info = SyncGroupInfo("ipc", "", 0, 0, 60, ipc_senders={gpu_uuid(): ("127.0.0.1", free_port("127.0.0.1"), 1)},
                         slot_bytes=16)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    receiver = ctx.Process(target=_ipc_receiver, args=(info, queue))
    receiver.start()
    sender = IpcTransport(info, sender=True)  # waits for the receiver to join its store
    for i, slot in enumerate(sender._slots):
        slot.copy_(torch.arange(16, dtype=torch.uint8) + 100 * i)
    torch.cuda.synchronize()
    sender._store.set("filled/ready", b"1")
    got = queue.get(timeout=60)
    sender._store.wait(["done/read/0"])
    receiver.join(timeout=60)
    assert receiver.exitcode == 0
    assert got == [list(range(16)), [100 + j for j in range(16)]]
