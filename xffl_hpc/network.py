"""Which network interface a job's collectives use (pure Python: sockets and psutil).

A host's own name often resolves to loopback (127.0.1.1 on default Debian/Ubuntu
installs), and gloo binds to whatever the host name resolves to: across hosts the job
then fails or hangs. So for a job that spans hosts the interface is chosen here: an
explicit ``XFFL_HPC_IFNAME``, ``GLOO_SOCKET_IFNAME`` or ``NCCL_SOCKET_IFNAME`` wins;
otherwise the interface the kernel routes through to reach the other hosts, never
loopback. ``XFFL_HPC_AUTO_IFNAME=0`` switches the choice off.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

from xffl_hpc.errors import DistributedError
from xffl_hpc.schedulers.rendezvous import interface_address
from xffl_hpc.schedulers.variables import quote

EXPLICIT = ("XFFL_HPC_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
AUTO_VARIABLE = "XFFL_HPC_AUTO_IFNAME"
#: Where the choice is handed to the backends, when the user has not set them.
BACKEND_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


@dataclass(frozen=True)
class Interface:
    """The interface this process's collectives use, and why.

    ``name`` is ``None`` when nothing is chosen (one host, or the choice switched off):
    then gloo takes the address this host's name resolves to.
    """

    name: str | None
    address: str | None
    reason: str

    def __str__(self) -> str:
        if self.name is None:
            return f"default ({self.reason})"
        return f"{self.name} {self.address} ({self.reason})"


def short(host: str) -> str:
    return host.split(".", 1)[0]


def resolve(host: str) -> str | None:
    """The first IPv4 address ``host`` resolves to here, or ``None``."""
    try:
        found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(found[0][4][0]) if found else None


def is_loopback(address: str | None) -> bool:
    return address is not None and ipaddress.ip_address(address).is_loopback


def ipv4_interfaces() -> dict[str, str]:
    """Every interface that is up, with its first IPv4 address."""
    import psutil

    stats = psutil.net_if_stats()
    found = {}
    for name, addresses in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for address in addresses:
            if address.family == socket.AF_INET:
                found[name] = address.address
                break
    return found


def loopback_interface() -> str:
    """The name of this host's IPv4 loopback interface (``lo`` on Linux)."""
    for name, address in ipv4_interfaces().items():
        if is_loopback(address):
            return name
    raise DistributedError("this host has no IPv4 loopback interface that is up")


def source_address(peer: str) -> str | None:
    """The local address the kernel would use to reach ``peer`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((peer, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def _explicit(environ: Mapping[str, str]) -> Interface | None:
    for variable in EXPLICIT:
        value = environ.get(variable, "").strip()
        if not value:
            continue
        first = value.split(",")[0].strip()
        if variable == "NCCL_SOCKET_IFNAME" and first[:1] in "^=":
            continue  # NCCL's exclusion or exact-match syntax: not one interface
        return Interface(first, interface_address(first, variable), f"from {variable}")
    return None


def choose_interface(
    hosts: Iterable[str], this_host: str, environ: Mapping[str, str] | None = None
) -> Interface:
    """The interface this process should use, given every rank's host name.

    Raises :class:`~xffl_hpc.errors.DistributedError` naming this host, the addresses
    involved and the fix when the job spans hosts and no interface reaches the others.
    """
    env = os.environ if environ is None else environ
    explicit = _explicit(env)
    if explicit is not None:
        return explicit
    if env.get(AUTO_VARIABLE, "").strip() == "0":
        return Interface(None, None, f"choice off: {AUTO_VARIABLE}=0")
    others = sorted({short(h) for h in hosts} - {short(this_host)})
    if not others:
        return Interface(None, None, "one host")
    interfaces = ipv4_interfaces()
    by_address = {address: name for name, address in interfaces.items()}
    seen, remote = [], []
    for peer in others:
        address = resolve(peer)
        seen.append(f"{peer} -> {address or 'unresolved'}")
        if address is None or not (is_loopback(address) or address in by_address):
            remote.append((peer, address))
    if not remote:
        return Interface(None, None, "every host name resolves to this machine")
    for peer, address in remote:
        local = source_address(address) if address is not None else None
        if local is not None and not is_loopback(local) and local in by_address:
            return Interface(by_address[local], local, f"routes to {peer} {address}")
    candidates = ", ".join(
        f"{name} {address}"
        for name, address in sorted(interfaces.items())
        if not is_loopback(address)
    )
    raise DistributedError(
        f"{this_host}: no network interface reaches the other hosts of this job "
        f"({'; '.join(seen[:8])}; {this_host} itself resolves to {resolve(this_host)}): "
        f"set XFFL_HPC_IFNAME to the interface of the cluster network "
        f"(up here: {candidates or 'none but loopback'})"
    )


def apply(choice: Interface, environ: MutableMapping[str, str] | None = None) -> None:
    """Hand the choice to gloo and NCCL where the user has not set them."""
    env = os.environ if environ is None else environ
    if choice.name is None:
        return
    for variable in BACKEND_VARIABLES:
        if not env.get(variable, "").strip():
            env[variable] = choice.name


def advertised_address(choice: Interface, this_host: str) -> str | None:
    """The address peers will reach this rank at: the chosen interface's, else what this
    host's name resolves to (gloo's own choice)."""
    return choice.address if choice.address is not None else resolve(this_host)


def describe_loopback(this_host: str, address: str | None) -> str:
    """Why an advertised loopback address breaks a multi-host job, and the fix."""
    return (
        f"{this_host} resolves its own name to {quote(str(address))}, a loopback address the "
        "other hosts cannot reach (the Debian/Ubuntu default 127.0.1.1 line in /etc/hosts?): "
        f"leave {AUTO_VARIABLE} unset so xffl-hpc picks the interface that reaches them, or "
        "set XFFL_HPC_IFNAME"
    )
