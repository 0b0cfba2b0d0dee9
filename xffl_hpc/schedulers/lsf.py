"""IBM Spectrum LSF: the job allocation."""

from __future__ import annotations

from collections.abc import Mapping

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.hostfile import read_slots, unique_hosts
from xffl_hpc.schedulers.records import Allocation
from xffl_hpc.schedulers.variables import parse_int, quote, read_str


def _mcpu_hosts(name: str, text: str) -> tuple[str, ...]:
    """``LSB_MCPU_HOSTS`` is ``host count host count ...``: one entry per host."""
    words = text.split()
    if len(words) % 2:
        raise PlacementError(f"{name}={quote(text)}: expected pairs of host name and slot count")
    for count in words[1::2]:
        parse_int(name, count, minimum=1)
    return tuple(words[0::2])


def allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The LSF job of this process, or ``None``.

    Hosts come from ``LSB_DJOB_HOSTFILE`` (one line per slot), else ``LSB_MCPU_HOSTS``,
    in LSF's order: the first is where the batch script runs.
    """
    job = read_str(environ, "LSB_JOBID")
    if job is None:
        return None
    parse_int(job[0], job[1])
    sources = {"job_id": job[0]}
    hosts = None
    hostfile = read_str(environ, "LSB_DJOB_HOSTFILE")
    pairs = read_str(environ, "LSB_MCPU_HOSTS")
    if hostfile is not None:
        hosts = unique_hosts(read_slots(*hostfile))
        sources["hostnames"] = hostfile[0]
    elif pairs is not None:
        hosts = _mcpu_hosts(*pairs)
        sources["hostnames"] = pairs[0]
    return Allocation(
        scheduler="lsf", job_id=job[1], hostnames=hosts or None, port_key=job[1], sources=sources
    )
