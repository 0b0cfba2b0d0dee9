"""``xffl-hpc doctor``: check, on every rank, what a distributed start needs.

Run it as a job step (``srun xffl-hpc doctor``, ``mpiexec ... xffl-hpc doctor``, or under
``xffl-hpc emulate``). Every rank reports its placement, what the master's and its own
names resolve to, the interface its collectives will use, GPU visibility against its
local rank and the versions at hand; rank 0 serves the rendezvous port for a few seconds
and the others connect to it, which proves the port free and reachable and measures the
clock skew. Each problem is one line with its fix; the exit status is 1 when there is any.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from xffl_hpc.errors import XfflHpcError
from xffl_hpc.network import (
    AUTO_VARIABLE,
    choose_interface,
    describe_loopback,
    is_loopback,
    resolve,
    short,
)
from xffl_hpc.schedulers import Placement, detect

#: Seconds rank 0 serves the port and the others keep trying to reach it.
WAIT_SECONDS = 15.0
#: Clock differences above this many seconds are reported.
SKEW_LIMIT = 1.0


@dataclass
class Report:
    """What one rank found: facts to print and problems (each with its fix)."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _resolution(report: Report, placement: Placement, this: str, multi_host: bool) -> None:
    own = resolve(this)
    report.facts.append(f"{this} resolves to {own}")
    master = placement.master_addr
    if master is not None:
        report.facts.append(f"master {master} resolves to {resolve(master)} here")
    auto_off = os.environ.get(AUTO_VARIABLE, "").strip() == "0"
    if multi_host and is_loopback(own) and auto_off:
        report.problems.append(describe_loopback(this, own))


def _interface(report: Report, placement: Placement, this: str) -> None:
    try:
        choice = choose_interface(placement.hostnames or (), this)
    except XfflHpcError as error:
        report.problems.append(str(error))
        return
    report.facts.append(f"interface: {choice}")


def _gpus(report: Report, placement: Placement) -> None:
    try:
        import torch
    except ImportError:
        report.problems.append("torch is not importable here: install it in the job's environment")
        return
    report.facts.append(f"torch {torch.__version__}")
    if not torch.cuda.is_available():
        report.facts.append("no CUDA device visible (gloo on CPU)")
        return
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    report.facts.append(f"{count} GPU(s) visible (CUDA_VISIBLE_DEVICES={visible})")
    nccl = torch.cuda.nccl.version()
    report.facts.append(f"NCCL {'.'.join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}")
    if count == 1 and placement.local_world_size and placement.local_world_size > 1:
        report.facts.append("one GPU per rank (the launcher binds them)")
    elif placement.local_rank >= count:
        report.problems.append(
            f"local rank {placement.local_rank} but only {count} GPU(s) visible: ask for one "
            "GPU per task (--gpus-per-node = --ntasks-per-node) or fewer tasks per node"
        )


def _mpi(report: Report) -> None:
    for name in ("mpiexec", "mpirun"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            done = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        first = (done.stdout or done.stderr).strip().splitlines()
        report.facts.append(f"{name}: {first[0] if first else 'no version'} ({path})")
        return
    report.facts.append("no mpiexec or mpirun on PATH")


def _serve(report: Report, placement: Placement, port: int) -> None:
    """Rank 0: serve the port, answer every other rank with this clock, count arrivals."""
    try:
        listener = socket.create_server(("", port))
    except OSError as error:
        report.problems.append(
            f"rendezvous port {port} cannot be served on this host ({error.strerror}): set "
            "MASTER_PORT to a free port, or leave it unset to derive one from the job id"
        )
        return
    expected = placement.world_size - 1
    arrived = 0
    deadline = time.monotonic() + WAIT_SECONDS
    with listener:
        while arrived < expected and time.monotonic() < deadline:
            listener.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                connection, _ = listener.accept()
            except OSError:
                break
            with connection:
                connection.recv(256)
                connection.sendall(json.dumps({"time": time.time()}).encode())
            arrived += 1
    report.facts.append(f"rendezvous port {port}: served, {arrived} of {expected} ranks reached it")
    if arrived < expected:
        report.problems.append(
            f"{expected - arrived} rank(s) did not reach {placement.master_addr}:{port} within "
            f"{WAIT_SECONDS:g} s: see their own reports (name resolution, interface, firewall)"
        )


def _reach(report: Report, placement: Placement, port: int, this: str) -> None:
    """Any other rank: reach rank 0, compare clocks."""
    master = placement.master_addr
    deadline = time.monotonic() + WAIT_SECONDS
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((master, port), timeout=2) as connection:
                sent = time.time()
                connection.sendall(this.encode())
                answer = json.loads(connection.recv(256).decode())
                received = time.time()
        except (OSError, ValueError) as error:
            last = error if isinstance(error, OSError) else OSError(str(error))
            time.sleep(0.2)
            continue
        skew = answer["time"] - (sent + received) / 2
        report.facts.append(f"reached {master}:{port}; clock offset to rank 0 {skew:+.3f} s")
        if abs(skew) > SKEW_LIMIT:
            report.problems.append(
                f"clock differs from rank 0's by {skew:+.1f} s: enable NTP/chrony on the nodes "
                "(timeouts and logs across hosts depend on it)"
            )
        return
    report.problems.append(
        f"cannot reach the rendezvous at {master}:{port} (resolves to {resolve(master)} here) "
        f"within {WAIT_SECONDS:g} s ({last}): check that rank 0 runs, that {master} names an "
        "address of its host reachable from here, or set MASTER_ADDR"
    )


def examine(environ: Mapping[str, str] | None = None) -> tuple[Placement | None, Report]:
    """This rank's report."""
    report = Report()
    this = socket.gethostname()
    try:
        placement = detect(environ)
    except XfflHpcError as error:
        report.problems.append(str(error))
        return None, report
    hosts = {short(host) for host in placement.hostnames or (this,)}
    report.facts.append(
        f"{placement.scheduler}/{placement.launcher} rank {placement.rank} of "
        f"{placement.world_size}, local rank {placement.local_rank}, node {placement.node_rank}"
        f" of {placement.num_nodes}"
    )
    _resolution(report, placement, this, len(hosts) > 1)
    _interface(report, placement, this)
    _gpus(report, placement)
    _mpi(report)
    if placement.world_size > 1:
        if placement.master_addr is None or placement.master_port is None:
            report.problems.append("no rendezvous address or port: set MASTER_ADDR and MASTER_PORT")
        elif placement.rank == 0:
            _serve(report, placement, placement.master_port)
        else:
            _reach(report, placement, placement.master_port, this)
    return placement, report


def main() -> int:
    """Print this rank's report, one line each; 1 when there is a problem."""
    placement, report = examine()
    who = f"rank {placement.rank}" if placement is not None else "this process"
    prefix = f"[doctor] {who} on {socket.gethostname()}:"
    for fact in report.facts:
        print(f"{prefix} {fact}", flush=True)
    for problem in report.problems:
        print(f"{prefix} PROBLEM: {problem}", flush=True)
    if not report.problems:
        print(f"{prefix} all checks passed", flush=True)
    return 1 if report.problems else 0
