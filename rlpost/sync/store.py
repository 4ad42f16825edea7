"""Rendezvous stores (torch TCPStores) that listen only where the cluster lives.

A TCPStore server listens on every interface, whatever host it is given (the host only tells clients where to
connect), and anyone who reaches it can read and write the group's keys. On a local cluster every member is on
this machine, so the server here listens on a loopback socket of our own, handed to the store by its file
descriptor; on a multi-node cluster the members need the node's address, and the store listens on all
interfaces as before (the network is the cluster's: see launch/README.md).
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a store is made: `rlpost-submit` imports `is_loopback` without it
    import torch.distributed as dist


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def free_port(host: str) -> int:
    """A port that is free on `host` now (a rendezvous binds it moments later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host if is_loopback(host) else "", 0))
        return s.getsockname()[1]


def tcp_store(host: str, port: int, world_size: int, is_master: bool, timeout: timedelta) -> dist.TCPStore:
    """A TCPStore at host:port; the master hosts the server, on loopback only when `host` is a loopback address."""
    import torch.distributed as dist

    if not (is_master and is_loopback(host)):
        return dist.TCPStore(host, port, world_size, is_master=is_master, timeout=timeout)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    # detach(): the store owns the descriptor from here on (closing it twice would close a stranger's socket)
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach())
