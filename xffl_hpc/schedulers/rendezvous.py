"""Where ranks meet: the master port derived from the job, and interface addresses."""

from __future__ import annotations

import socket
import zlib

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.variables import quote

#: Derived ports lie in ``PORT_BASE .. PORT_BASE + PORT_SPAN - 1``: below Linux's default
#: ephemeral range (32768-60999), so an outgoing connection never holds one by chance.
PORT_BASE = 20000
PORT_SPAN = 10000
#: Each job owns a block of this many consecutive ports, one per step (modulo the block):
#: jobs whose numeric ids differ by less than PORT_SPAN // STEPS_PER_JOB never share a port
#: in their first STEPS_PER_JOB steps.
STEPS_PER_JOB = 4


def _number(key: str) -> int:
    head = key.split(".", 1)[0]
    if head.isascii() and head.isdigit():
        return int(head)
    return zlib.crc32(key.encode())


def derive_port(job_key: str, step_id: str | None = None) -> int:
    """The rendezvous port of a job step: the same on every rank, different per job.

    Numeric job ids (``4242``, PBS's ``4242.server``) map one-to-one onto blocks of
    ``STEPS_PER_JOB`` ports, the step picks the port in its job's block: two jobs sharing
    a node get different ports unless their ids differ by a multiple of 2,500 (or a step
    wraps around its block); other ids and steps (``batch``) are hashed. A collision
    that does happen is caught at the rendezvous, which names both jobs.
    """
    step = _number(step_id) if step_id else 0
    blocks = PORT_SPAN // STEPS_PER_JOB
    return PORT_BASE + (_number(job_key) % blocks) * STEPS_PER_JOB + step % STEPS_PER_JOB


def interface_address(ifname: str, variable: str) -> str:
    """The IPv4 address of network interface ``ifname`` on this host."""
    import psutil

    interfaces = psutil.net_if_addrs()
    if ifname not in interfaces:
        raise PlacementError(
            f"{variable}={quote(ifname)}: no such network interface on {socket.gethostname()} "
            f"(have: {', '.join(sorted(interfaces))})"
        )
    for address in interfaces[ifname]:
        if address.family == socket.AF_INET:
            return address.address
    raise PlacementError(
        f"{variable}={quote(ifname)}: the interface has no IPv4 address on {socket.gethostname()}"
    )
