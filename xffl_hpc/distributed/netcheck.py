"""Before the process group: choose the interface and prove the hosts reach each other.

gloo's full-mesh connect can wait far longer than the configured timeout when a peer
advertises an address nobody can reach; this check fails in seconds instead, on every
rank, naming the peer and its address.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Sequence

from xffl_hpc.distributed.rendezvous import Rendezvous
from xffl_hpc.errors import XfflHpcError
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


def _first_rank_endpoints(hosts: Sequence[str]) -> Callable[[list[str]], str]:
    """Rank 0's summary of the network check-in: the endpoint of the first rank of each
    host, as JSON ``{host: [rank, address, port]}``."""

    def summarize(values: list[str]) -> str:
        found: dict[str, list[object]] = {}
        for rank, (host, value) in enumerate(zip(hosts, values, strict=True)):
            if short(host) not in found:
                peer, port = value.split()
                found[short(host)] = [rank, peer, int(port)]
        return json.dumps(found, separators=(",", ":"))

    return summarize


def network_check(rendezvous: Rendezvous, hosts: Sequence[str]) -> Interface:
    """Choose this rank's interface, hand it to the backends, and check that this rank
    reaches one rank on every other host at the address that rank will use.

    ``hosts`` is every rank's host name, in rank order.
    """
    rank = rendezvous.rank
    this = socket.gethostname()
    try:
        choice = choose_interface(hosts, this)
    except XfflHpcError as error:
        raise rendezvous.fail(f"rank {rank}: {error}") from None
    apply(choice)
    if len({short(host) for host in hosts}) <= 1:
        return choice
    address = advertised_address(choice, this)
    if address is None or is_loopback(address):
        raise rendezvous.fail(f"rank {rank}: {describe_loopback(this, address)}")
    with socket.create_server((address, 0), backlog=min(len(hosts), 4096)) as listener:
        threading.Thread(target=_accept_until_closed, args=(listener,), daemon=True).start()
        endpoints = json.loads(
            rendezvous.check_in(
                "network check",
                f"{address} {listener.getsockname()[1]}",
                summarize=_first_rank_endpoints(hosts),
            )
        )
        for host, (other, peer, port) in endpoints.items():
            if host == short(this):
                continue
            try:
                probe = socket.create_connection(
                    (peer, port),
                    timeout=min(PROBE_SECONDS, rendezvous.timeout.total_seconds()),
                )
            except OSError as error:
                raise rendezvous.fail(
                    f"rank {rank} on {this} ({choice}) cannot reach rank {other} on {host} at "
                    f"{peer}:{port}, the address its collectives will use "
                    f"({error.strerror or error}): set XFFL_HPC_IFNAME to an interface of a "
                    "network both hosts share"
                ) from None
            probe.close()
        rendezvous.check_in("network check's end")
    return choice
