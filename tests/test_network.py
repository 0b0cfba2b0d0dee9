"""Interface choice and `xffl-hpc doctor` on one host (the two-host cases run on the
network-namespace test bed, tests/test_multihost.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.multiproc import ROOT
from xffl_hpc import DistributedError, PlacementError
from xffl_hpc.network import apply, choose_interface, resolve

HOST = socket.gethostname()


def test_explicit_variable_wins_in_order() -> None:
    found = choose_interface(["a", "b"], HOST, {"GLOO_SOCKET_IFNAME": "lo", "X": "1"})
    assert (found.name, found.address, found.reason) == (
        "lo",
        "127.0.0.1",
        "from GLOO_SOCKET_IFNAME",
    )
    both = {"XFFL_HPC_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "nosuch0"}
    assert choose_interface([], HOST, both).reason == "from XFFL_HPC_IFNAME"


def test_nccl_exclusion_syntax_is_not_taken_for_an_interface() -> None:
    found = choose_interface([HOST], HOST, {"NCCL_SOCKET_IFNAME": "^docker,lo"})
    assert found.name is None


def test_unknown_interface_is_named_with_the_variable() -> None:
    with pytest.raises(PlacementError, match=r"XFFL_HPC_IFNAME='nosuch0': no such network"):
        choose_interface([], HOST, {"XFFL_HPC_IFNAME": "nosuch0"})


def test_one_host_or_local_names_need_no_choice() -> None:
    assert choose_interface([HOST, HOST], HOST, {}).reason == "one host"
    local = choose_interface([HOST, "localhost"], HOST, {})
    assert (local.name, local.reason) == (None, "every host name resolves to this machine")


def test_choice_can_be_switched_off() -> None:
    found = choose_interface(["elsewhere"], HOST, {"XFFL_HPC_AUTO_IFNAME": "0"})
    assert found.name is None and "XFFL_HPC_AUTO_IFNAME=0" in found.reason


def test_an_unresolvable_peer_fails_naming_it_and_the_fix() -> None:
    with pytest.raises(DistributedError) as caught:
        choose_interface([HOST, "nosuchhost.invalid"], HOST, {})
    message = str(caught.value)
    assert message.startswith(f"{HOST}: no network interface reaches the other hosts")
    assert "nosuchhost -> unresolved" in message
    assert "set XFFL_HPC_IFNAME" in message


def test_apply_sets_only_what_the_user_left_unset() -> None:
    environ = {"NCCL_SOCKET_IFNAME": "ib0"}
    apply(choose_interface([], HOST, {"XFFL_HPC_IFNAME": "lo"}), environ)
    assert environ == {"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "lo"}


#: Emulated node names that resolve nowhere (the CI cluster puts n1, n2 in /etc/hosts).
NOWHERE = "xffl-nowhere-"


def emulate_doctor(*extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "xffl_hpc", "emulate", "--nodes", "2", "--tasks-per-node"]
    command += ["1", "--node-prefix", NOWHERE, *extra, "--", "-m", "xffl_hpc", "doctor"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_doctor_passes_on_a_healthy_emulated_job_whose_names_resolve_nowhere() -> None:
    assert resolve(f"{NOWHERE}1") is None
    done = emulate_doctor()
    assert done.returncode == 0, done.stdout[-3000:]
    assert "PROBLEM" not in done.stdout and not done.stderr, done.stderr
    assert done.stdout.count("all checks passed") == 2
    assert "rendezvous port" in done.stdout and "served, 1 of 1 ranks reached it" in done.stdout
    assert "clock offset to rank 0" in done.stdout


def test_doctor_names_a_taken_port_and_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "xffl_hpc", "doctor"],
            env={
                "PATH": "/usr/bin:/bin",
                "RANK": "0",
                "WORLD_SIZE": "2",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"PROBLEM: rendezvous port {port} cannot be served on this host" in done.stdout
    assert "set MASTER_PORT to a free port" in done.stdout
