"""``xffl-hpc layout``, run as a user runs it: a separate process."""

from __future__ import annotations

import subprocess
import sys

import pytest


def layout(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xffl_hpc", "layout", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_symmetric_federation_with_hsdp() -> None:
    done = layout("--world-size", "8", "--hsdp", "2", "--federated", "4", "--tasks-per-node", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "federated+hsdp: world size 8, 2 federated groups of 4 ranks, "
        "hsdp 2 (2 replicas per group), 4 nodes of 2 ranks"
    )
    assert "mesh: shape (2, 2, 2), dims ('federation', 'replica', 'shard')" in lines
    assert "node 0  [ 0:F0 R0 S0*  1:F0 R0 S1* ]" in lines
    assert "node 3  [ 6:F1 R1 S0*  7:F1 R1 S1* ]" in lines
    assert "shard groups (4):  [0 1]  [2 3]  [4 5]  [6 7]" in lines
    assert "replica groups (4):  [0 2]  [1 3]  [4 6]  [5 7]" in lines
    assert "averaging groups (4):  [0 4]  [1 5]  [2 6]  [3 7]" in lines
    assert done.stderr == ""


@pytest.mark.parametrize(
    "federation", [("--federated", "2,6"), ("--federated-nodes", "1,3"), ("--federated", "(2,6)")]
)
def test_asymmetric_federation_in_ranks_or_nodes(federation: tuple[str, str]) -> None:
    done = layout("--world-size", "8", "--hsdp", "2", *federation, "--node-sizes", "2,2,2,2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2 federated groups of (2, 6) ranks" in lines[0]
    assert "node 1  [ 2:F1 R0 S0*  3:F1 R0 S1 <5 ]" in lines
    assert "node 2  [ 4:F1 R1 S0 <2  5:F1 R1 S1* ]" in lines
    assert "averaging groups (2):  [0 2]  [1 5]" in lines


def test_plain_world_without_node_sizes() -> None:
    done = layout("--world-size", "12")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "fsdp: world size 12"
    assert any(line.startswith("ranks 8-11") for line in lines)


def test_huge_world_prints_a_few_nodes() -> None:
    done = layout("--world-size", "100000", "--hsdp", "8", "--federated", "25000")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) < 20


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--world-size", "8", "--federated", "2,4"], "federated=(2, 4) adds up to 6"),
        (["--world-size", "8", "--hsdp", "3"], "hsdp=3"),
        (["--world-size", "8", "--federated", "2,6"], "different sizes"),
        (["--world-size", "8", "--federated", "8"], "drop federated"),
        (["--world-size", "x"], "--world-size='x'"),
        (["--world-size", "8", "--hsdp", "0"], "--hsdp='0'"),
        (["--world-size", "8", "--federated", "2;6"], "--federated='2;6'"),
        (["--world-size", "8", "--tasks-per-node", "3"], "--tasks-per-node=3"),
        (["--world-size", "8", "--node-sizes", "4,3"], "--node-sizes=4,3 adds up to 7"),
        (["--world-size", "8", "--tasks-per-node", "2", "--node-sizes", "4,4"], "not both"),
        (["--world-size", "8", "--federated", "4", "--federated-nodes", "2"], "not both"),
        (["--world-size", "8", "--federated-nodes", "2"], "--tasks-per-node or --node-sizes"),
        (["--world-size", "8", "--tasks-per-node", "2", "--federated-nodes", "3"], "3"),
    ],
)
def test_invalid_input_is_one_error_line(args: list[str], expected: str) -> None:
    done = layout(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xffl-hpc: error: "), done.stderr
    assert expected in lines[0]
