"""The rendezvous: a TCP store on rank 0 (or torchrun's agent) that every rank checks in
with, so that a rank that never arrives is named instead of waited for in silence.

Every key lives under the job's scope (job, step, torchrun run and restart attempt), and
the store is claimed by the job that first reached it: a rank of another job that reaches
it fails at once, naming both jobs, instead of corrupting the counts. A check-in costs each
rank three store operations and one blocking wait on the server (no polling); rank 0
watches the wait in a thread of its own, prints at most one line every
``REPORT_SECONDS`` naming the missing ranks, and at the deadline ends the wait on every
rank with a message that names them.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

import torch.distributed as dist

from xffl_hpc.errors import DistributedError
from xffl_hpc.schedulers import Placement

#: Ranks named one by one in an error message; more are counted.
NAMED_RANKS = 32
#: Ranks named in a progress line while waiting.
SHOWN_WHILE_WAITING = 8
#: Seconds between two progress lines of rank 0 while ranks are missing.
REPORT_SECONDS = 30.0
#: Seconds a rank waits beyond the timeout for rank 0's verdict before giving up alone.
_BACKSTOP = 30.0
#: Seconds rank 0 keeps the store up after a failure for the others to read why.
_LINGER = 2.0
#: Seconds between attempts to reach rank 0's store.
_RETRY = 0.2
#: The key that names the job owning the store.
OWNER_KEY = "xffl/owner"
_OK = "ok"
_FAILED = "failed"


def _show_ranks(ranks: list[int], limit: int = NAMED_RANKS) -> str:
    shown = ", ".join(map(str, ranks[:limit]))
    more = len(ranks) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
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
    host: str, port: int, rank: int, world_size: int, timeout: timedelta, server: str | None
) -> dist.TCPStore:
    """Serve the store at ``host:port`` when ``server`` is ``None``, else connect to it
    (``server`` says who serves it: rank 0, or torchrun's agent)."""
    where = address(host, port)
    serve = server is None
    if server is not None:
        unreachable = _wait_for_server(host, port, timeout)
        if unreachable is not None:
            raise DistributedError(
                f"rank {rank} of {world_size} could not reach the rendezvous at {where} within "
                f"{timeout.total_seconds():g} s: {server}, which serves it, did not start or "
                f"cannot be reached from {socket.gethostname()} ({unreachable})"
            )
    try:
        return dist.TCPStore(host, port, is_master=serve, timeout=timeout, wait_for_workers=False)
    except (RuntimeError, OSError) as error:
        if serve and _port_taken(error):
            raise DistributedError(
                f"rank 0 cannot serve the rendezvous at {where}: port {port} is already in "
                "use on this host (another job, or a previous run still exiting); choose "
                "another with MASTER_PORT=<free port>, or let xffl-hpc derive one from the "
                "job id by leaving MASTER_PORT unset"
            ) from error
        if serve:
            raise DistributedError(
                f"rank 0 cannot serve the rendezvous at {where}: {error} (is {host} an "
                "address of this host? set MASTER_ADDR or XFFL_HPC_IFNAME)"
            ) from error
        raise DistributedError(
            f"rank {rank} of {world_size} reached {where} but could not join the "
            f"rendezvous there: {error}"
        ) from error


def job_scope(placement: Placement, environ: Mapping[str, str]) -> tuple[str, str]:
    """The job this process belongs to, in words, and the key prefix of this attempt.

    The job is the scheduler's job and step, and torchrun's run id; the prefix adds
    torchrun's restart count, so that a restarted attempt never reads the keys of the
    attempt before it in the agent's store.
    """
    parts = []
    if placement.job_id is not None:
        parts.append(f"job {placement.job_id}")
    if placement.step_id is not None:
        parts.append(f"step {placement.step_id}")
    run = environ.get("TORCHELASTIC_RUN_ID", "").strip()
    if run:
        parts.append(f"torchrun run {run}")
    job = ", ".join(parts) or "a job without a job id"
    attempt = environ.get("TORCHELASTIC_RESTART_COUNT", "").strip() or "0"
    return job, f"xffl/{job}/attempt {attempt}/"


def uses_agent_store(environ: Mapping[str, str]) -> bool:
    """Whether torchrun's agent already serves the store at MASTER_PORT."""
    return environ.get("TORCHELASTIC_USE_AGENT_STORE", "") == "True"


class Rendezvous:
    """The scoped store of one job attempt and its check-ins, which every rank passes in
    the same order."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        world_size: int,
        timeout: timedelta,
        where: str,
        connect: Callable[[], dist.Store] | None = None,
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.timeout = timeout
        self.where = where
        self._connect = connect
        self._watch_store: dist.Store | None = None
        self._phase = 0

    def _key(self, name: str, phase: int | None = None) -> str:
        return f"check-in {self._phase if phase is None else phase}/{name}"

    def fail(
        self, message: str, store: dist.Store | None = None, phase: int | None = None
    ) -> DistributedError:
        """End the check-in every rank waits at (or will reach next) with ``message``;
        the error for this rank to raise."""
        target = self.store if store is None else store
        # "end" first: rank 0 wakes on "all", and the store ends with rank 0's process
        for name in ("end", "all"):
            with contextlib.suppress(RuntimeError, OSError):
                target.compare_set(self._key(name, phase), "", f"{_FAILED} {message}")
        return DistributedError(f"rank {self.rank} of {self.world_size}: {message}")

    def check_in(
        self, label: str, value: str = "", summarize: Callable[[list[str]], str] | None = None
    ) -> str:
        """Wait until every rank has checked in for ``label``.

        Each rank leaves ``value`` (one line); with ``summarize``, rank 0 turns every rank's
        value (in rank order) into one text that every rank gets back, else the answer is
        empty. Raises :class:`~xffl_hpc.errors.DistributedError` when a rank fails here,
        or names the ranks that did not arrive within the timeout.
        """
        self.store.append(self._key("arrivals"), f"{self.rank} {value}\n")
        arrived = self.store.add(self._key("count"), 1)
        last = "all" if summarize is not None else "end"
        if arrived == self.world_size:
            self.store.compare_set(self._key(last), "", _OK)
        watcher = self._watch(label) if self.rank == 0 else None
        try:
            if summarize is not None and self.rank == 0:
                self._verdict(self._wait("all", label))
                try:
                    text = summarize(self._values())
                except DistributedError as error:
                    raise self.fail(str(error)) from None
                self.store.compare_set(self._key("end"), "", f"{_OK} {text}")
            answer = self._verdict(self._wait("end", label))
        finally:
            if watcher is not None:
                watcher.set()
        self._phase += 1
        return answer

    def _arrivals(self, store: dist.Store, phase: int | None = None) -> dict[int, str]:
        """The value each rank that arrived so far left, by rank."""
        lines = store.get(self._key("arrivals", phase)).decode().splitlines()
        return {int(rank): value for rank, _, value in (line.partition(" ") for line in lines)}

    def _values(self) -> list[str]:
        arrived = self._arrivals(self.store)
        return [arrived[rank] for rank in range(self.world_size)]

    def _wait(self, name: str, label: str) -> str:
        key = self._key(name)
        try:
            self.store.wait([key], self.timeout + timedelta(seconds=_BACKSTOP))
            return self.store.get(key).decode()
        except (RuntimeError, OSError) as error:
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: the {label} ended without all ranks "
                "(rank 0, which watches it, stopped first: its message names the missing "
                "ranks)"
            ) from error

    def _verdict(self, outcome: str) -> str:
        status, _, text = outcome.partition(" ")
        if status == _OK:
            return text
        if self.rank == 0:
            self._linger()
        else:
            with contextlib.suppress(RuntimeError, OSError):
                self.store.add(self._key("told"), 1)
        raise DistributedError(f"rank {self.rank} of {self.world_size}: {text}")

    def _linger(self) -> None:
        """Rank 0, on a failure: keep the store up (it ends with this process) until the
        other ranks that arrived have read why, for at most ``_LINGER`` seconds."""
        deadline = time.monotonic() + _LINGER
        with contextlib.suppress(RuntimeError, OSError):
            others = self.store.add(self._key("count"), 0) - 1
            while self.store.add(self._key("told"), 0) < others:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)

    def _watch(self, label: str) -> threading.Event | None:
        """Rank 0: report missing ranks every ``REPORT_SECONDS`` and, at the deadline,
        end the check-in on every rank with their names. The returned event stops it."""
        if self._connect is None:
            return None
        if self._watch_store is None:
            self._watch_store = self._connect()
        done = threading.Event()
        threading.Thread(
            target=self._watcher, args=(self._watch_store, label, self._phase, done), daemon=True
        ).start()
        return done

    def _missing(self, store: dist.Store, phase: int) -> list[int]:
        arrived = self._arrivals(store, phase)
        return [rank for rank in range(self.world_size) if rank not in arrived]

    def _watcher(self, store: dist.Store, label: str, phase: int, done: threading.Event) -> None:
        started = time.monotonic()
        deadline = started + self.timeout.total_seconds()
        with contextlib.suppress(RuntimeError, OSError):
            while not done.wait(min(REPORT_SECONDS, max(deadline - time.monotonic(), 0.0))):
                missing = self._missing(store, phase)
                if not missing:
                    return
                if time.monotonic() >= deadline:
                    self.fail(
                        f"rank(s) {_show_ranks(missing)} did not reach the {label} within "
                        f"{self.timeout.total_seconds():g} s "
                        f"({self.world_size - len(missing)} of {self.world_size} arrived); "
                        "check that those ranks started (their logs), or raise "
                        "XFFL_HPC_TIMEOUT if they are only slow",
                        store,
                        phase,
                    )
                    return
                print(
                    f"[xffl-hpc] rank 0: waiting {time.monotonic() - started:.0f} s at the "
                    f"{label} for {len(missing)} of {self.world_size} rank(s): "
                    f"{_show_ranks(missing, SHOWN_WHILE_WAITING)}",
                    file=sys.stderr,
                    flush=True,
                )


def join(
    placement: Placement,
    host: str,
    port: int,
    timeout: timedelta,
    environ: Mapping[str, str],
) -> Rendezvous:
    """Open (or reach) the job's store and claim it for this job; the rendezvous of this
    attempt, before any check-in."""
    rank, world = placement.rank, placement.world_size
    if uses_agent_store(environ):
        server: str | None = "torchrun's agent"
    else:
        server = None if rank == 0 else "rank 0"
    raw = open_store(host, port, rank, world, timeout, server)
    job, prefix = job_scope(placement, environ)
    owner = raw.compare_set(OWNER_KEY, "", job).decode()
    where = address(host, port)
    if owner != job:
        raise DistributedError(
            f"rank {rank} of {world} ({job}) reached the rendezvous at {where}, which "
            f"belongs to {owner}: two jobs on this host use the same port; give one of "
            "them another with MASTER_PORT=<free port>"
        )

    def connect() -> dist.Store:
        client = dist.TCPStore(host, port, is_master=False, timeout=timeout)
        return dist.PrefixStore(prefix, client)

    return Rendezvous(dist.PrefixStore(prefix, raw), rank, world, timeout, where, connect)
