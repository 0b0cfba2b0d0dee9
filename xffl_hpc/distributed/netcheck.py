"""Before the process group: choose the interface and prove the hosts reach each other.

gloo's full-mesh connect can wait far longer than the configured timeout when a peer
advertises an address nobody can reach; this check fails in seconds instead, on every
rank, naming the peer and its address.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from datetime import timedelta

import torch.distributed as dist

from xffl_hpc.distributed.rendezvous import check_in, fail_everywhere, gathered
from xffl_hpc.errors import DistributedError
from xffl_hpc.network import (
    Interface,
    advertised_address,
    apply,
    choose_interface,
    describe_loopback,
    is_loopback,
    short,
)

#: Longest wait for one probe connection to a peer host.
PROBE_SECONDS = 5.0


def _accept_until_closed(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            connection, _ = listener.accept()
            connection.close()


def network_check(
    store: dist.Store, rank: int, world_size: int, hosts: list[str], timeout: timedelta
) -> Interface:
    """Choose this rank's interface, hand it to the backends, and check that this rank
    reaches one rank on every other host at the address that rank will use."""
    this = socket.gethostname()
    try:
        choice = choose_interface(hosts, this)
    except DistributedError as error:
        raise fail_everywhere(store, f"rank {rank}: {error}") from None
    apply(choice)
    if len({short(host) for host in hosts}) <= 1:
        return choice
    address = advertised_address(choice, this)
    if address is None or is_loopback(address):
        raise fail_everywhere(store, f"rank {rank}: {describe_loopback(this, address)}")
    with socket.create_server((address, 0), backlog=min(world_size, 4096)) as listener:
        threading.Thread(target=_accept_until_closed, args=(listener,), daemon=True).start()
        port = listener.getsockname()[1]
        check_in(store, "network", rank, world_size, timeout, value=f"{address} {port}")
        endpoints = gathered(store, "network", world_size)
        first_rank: dict[str, int] = {}
        for other, host in enumerate(hosts):
            first_rank.setdefault(short(host), other)
        for host, other in first_rank.items():
            if host == short(this):
                continue
            peer, peer_port = endpoints[other].split()
            try:
                probe = socket.create_connection(
                    (peer, int(peer_port)), timeout=min(PROBE_SECONDS, timeout.total_seconds())
                )
            except OSError as error:
                raise fail_everywhere(
                    store,
                    f"rank {rank} on {this} ({choice}) cannot reach rank {other} on {host} at "
                    f"{peer}:{peer_port}, the address its collectives will use "
                    f"({error.strerror or error}): set XFFL_HPC_IFNAME to an interface of a "
                    "network both hosts share",
                ) from None
            probe.close()
        check_in(store, "network checked", rank, world_size, timeout)
    return choice
