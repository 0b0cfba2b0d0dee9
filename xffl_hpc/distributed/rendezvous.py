"""The rendezvous: a TCP store on rank 0 that every rank checks in with, so that a rank
that never arrives is named instead of waited for in silence."""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from datetime import timedelta

import torch.distributed as dist

from xffl_hpc.errors import DistributedError

#: Ranks named one by one in an error message; more are counted.
NAMED_RANKS = 32
#: Seconds between attempts to reach rank 0's store.
_RETRY = 0.2


def _show_ranks(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:NAMED_RANKS]))
    more = len(ranks) - NAMED_RANKS
    return shown + (f" and {more} more" if more > 0 else "")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_taken(error: BaseException) -> bool:
    text = str(error).lower()
    return "address already in use" in text or f"errno: {errno.EADDRINUSE}" in text


def _wait_for_server(host: str, port: int, timeout: timedelta) -> OSError | None:
    """Try to connect until it works or ``timeout`` has passed; the last error if never."""
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(left, 0.1)):
                return None
        except OSError as error:
            if time.monotonic() + _RETRY > deadline:
                return error
        time.sleep(_RETRY)


def open_store(
    host: str, port: int, rank: int, world_size: int, timeout: timedelta
) -> dist.TCPStore:
    """Rank 0 serves the store at ``host:port``, the others connect to it."""
    where = _address(host, port)
    if rank != 0:
        unreachable = _wait_for_server(host, port, timeout)
        if unreachable is not None:
            raise DistributedError(
                f"rank {rank} of {world_size} could not reach the rendezvous at {where} within "
                f"{timeout.total_seconds():g} s: rank 0, which serves it, did not start or "
                f"cannot be reached from {socket.gethostname()} ({unreachable})"
            )
    try:
        return dist.TCPStore(
            host, port, is_master=rank == 0, timeout=timeout, wait_for_workers=False
        )
    except (RuntimeError, OSError) as error:
        if rank == 0 and _port_taken(error):
            raise DistributedError(
                f"rank 0 cannot serve the rendezvous at {where}: port {port} is already in "
                "use on this host (another job, or a previous run still exiting); choose "
                "another with MASTER_PORT=<free port>, or let xffl-hpc derive one from the "
                "job id by leaving MASTER_PORT unset"
            ) from error
        if rank == 0:
            raise DistributedError(
                f"rank 0 cannot serve the rendezvous at {where}: {error} (is {host} an "
                "address of this host? set MASTER_ADDR or XFFL_HPC_IFNAME)"
            ) from error
        raise DistributedError(
            f"rank {rank} of {world_size} reached {where} but could not join the "
            f"rendezvous there: {error}"
        ) from error


FAILED = "xffl/failed"
#: Seconds between looks at the store for the end of a phase or a failure.
_POLL = timedelta(seconds=0.5)


def fail_everywhere(store: dist.Store, message: str) -> DistributedError:
    """Tell every rank waiting at a check-in that this job failed; the error to raise."""
    with contextlib.suppress(RuntimeError, OSError):
        store.compare_set(FAILED, "", message)
    return DistributedError(message)


def check_in(
    store: dist.Store,
    phase: str,
    rank: int,
    world_size: int,
    timeout: timedelta,
    value: str = "",
    label: str | None = None,
) -> None:
    """Wait until all ``world_size`` ranks have checked in for ``phase`` (each leaves
    ``value``, default its host name); on timeout raise naming the ranks that did not,
    and at once when another rank failed (:func:`fail_everywhere`)."""
    store.set(f"xffl/{phase}/rank/{rank}", value or socket.gethostname())
    if store.add(f"xffl/{phase}/count", 1) == world_size:
        store.set(f"xffl/{phase}/all", "1")
    deadline = time.monotonic() + timeout.total_seconds()
    try:
        while True:
            try:
                store.wait([f"xffl/{phase}/all"], min(_POLL, timeout))
                return
            except (RuntimeError, OSError):
                if store.check([FAILED]):
                    raise DistributedError(
                        f"rank {rank} of {world_size}: {store.get(FAILED).decode()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
    except (RuntimeError, OSError) as error:
        label = label or phase
        try:
            missing = [r for r in range(world_size) if not store.check([f"xffl/{phase}/rank/{r}"])]
        except (RuntimeError, OSError):
            raise DistributedError(
                f"rank {rank} of {world_size}: the {label} ended without all ranks (rank 0, "
                "which serves it, stopped waiting first: its message names the missing ranks)"
            ) from error
        raise DistributedError(
            f"rank {rank} of {world_size}: rank(s) {_show_ranks(missing)} did not reach the "
            f"{label} within {timeout.total_seconds():g} s ({world_size - len(missing)} of "
            f"{world_size} arrived); check that those ranks started (their logs), or raise "
            f"XFFL_HPC_TIMEOUT if they are only slow"
        ) from error


def gathered(store: dist.Store, phase: str, world_size: int) -> list[str]:
    """Every rank's check-in value for ``phase``, in rank order."""
    keys = [f"xffl/{phase}/rank/{r}" for r in range(world_size)]
    return [value.decode() for value in store.multi_get(keys)]


RENDEZVOUS = "rendezvous"


def rendezvous(
    host: str, port: int, rank: int, world_size: int, timeout: timedelta
) -> tuple[dist.TCPStore, list[str]]:
    """The job's store once every rank has joined it, and every rank's host name."""
    store = open_store(host, port, rank, world_size, timeout)
    check_in(
        store, RENDEZVOUS, rank, world_size, timeout, label=f"rendezvous at {_address(host, port)}"
    )
    return store, gathered(store, RENDEZVOUS, world_size)
