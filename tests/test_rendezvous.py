"""Bounded waits that name the missing ranks; a taken port named; concurrent jobs apart."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

from tests.fakeenv import free_port
from tests.multiproc import ROOT, RUN_TIMEOUT, launch

TIMEOUT = 4


def env_rank(rank: int, world: int, port: int) -> dict[str, str]:
    """torchrun's variables for ``rank``, one rank per node, a short timeout."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "XFFL_HPC_TIMEOUT": str(TIMEOUT),
    }


def test_ranks_that_never_arrive_are_named_within_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    results = launch([env_rank(0, 4, port), env_rank(2, 4, port)], {}, timeout=60)
    assert time.monotonic() - started < TIMEOUT + 15
    master, other = (r.report for r in results)
    assert all(r.returncode == 3 for r in results)
    assert master is not None and master["error"] == "DistributedError"
    assert master["message"].startswith(
        f"rank 0 of 4: rank(s) 1, 3 did not reach the rendezvous at 127.0.0.1:{port} "
        f"within {TIMEOUT} s (2 of 4 arrived)"
    )
    assert "XFFL_HPC_TIMEOUT" in master["message"]
    assert other is not None and other["error"] == "DistributedError"
    assert "rank(s) 1, 3 did not reach" in other["message"] or (
        "its message names the missing ranks" in other["message"]
    )


def test_a_rank_without_its_master_names_the_address_within_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    [result] = launch([env_rank(1, 2, port)], {}, timeout=60)
    assert time.monotonic() - started < TIMEOUT + 15
    assert result.report is not None
    assert result.report["message"].startswith(
        f"rank 1 of 2 could not reach the rendezvous at 127.0.0.1:{port} within {TIMEOUT} s: "
        "rank 0, which serves it, did not start or cannot be reached"
    )


def test_a_rank_that_dies_before_the_groups_is_named() -> None:
    port = free_port()
    environments = [env_rank(rank, 3, port) for rank in range(3)]
    results = launch(environments, {"crash_before_groups": 1}, timeout=60)
    assert results[1].returncode == 5
    master = results[0].report
    assert master is not None
    assert master["message"].startswith(
        f"rank 0 of 3: rank(s) 1 did not reach the group creation within {TIMEOUT} s"
    )


def test_a_taken_port_is_named_with_how_to_choose_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        [result] = launch([env_rank(0, 2, port)], {}, timeout=60)
    assert result.report is not None
    message = result.report["message"]
    assert f"port {port} is already in use on this host" in message
    assert "MASTER_PORT=<free port>" in message


def test_two_emulated_jobs_on_one_machine_get_different_ports_and_both_run() -> None:
    example = str(ROOT / "examples" / "federated_mlp.py")
    jobs = []
    for job in ("1001", "1002"):
        command = [sys.executable, "-m", "xffl_hpc", "emulate", "--nodes", "2"]
        command += ["--tasks-per-node", "1", "--job-id", job, "--", example, "--steps", "5"]
        jobs.append(
            subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        outputs = [job.communicate(timeout=RUN_TIMEOUT)[0] for job in jobs]
    finally:
        for job in jobs:
            job.kill()
    assert [job.returncode for job in jobs] == [0, 0], outputs
    ports = [re.findall(r"rendezvous 127\.0\.0\.1:(\d+)", output) for output in outputs]
    assert all(len(found) == 1 for found in ports), outputs
    assert ports[0] != ports[1]
